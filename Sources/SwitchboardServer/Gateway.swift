public import Logging
import NIOCore
public import SwitchboardBackplane
public import SwitchboardProtocol
import SwitchboardRegistry
import Synchronization

/// One Switchboard gateway: the local connections (registry), the backplane, and the
/// bindings that keep the two in step (centrifuge's Node).
///
/// It is independent of which backplane it runs on. Sessions call it from their event
/// loops; the backplane calls ``deliver(_:)`` from its own thread or event loop. Nothing
/// here blocks.
public final class Gateway: Sendable {
    /// The configuration the gateway was built with.
    public let configuration: GatewayConfiguration
    let registry = ConnectionRegistry<SessionHandle>()
    let backplane: any Backplane
    /// ``GatewayConfiguration/history``.
    let history: (any HistoryStore)?
    let bindings: BindingReconciler
    /// ``GatewayConfiguration/presence``, with this gateway's counts.
    let presence: PresenceTracker?
    let logger: Logger
    let draining = Atomic<Bool>(false)
    let metrics = GatewayMetrics()
    /// The connection caps (gateway, user, client address), reserved per handshake.
    let admission: ConnectionAdmission

    /// Creates the gateway and installs it as the backplane's delivery handler.
    ///
    /// Without ``GatewayConfiguration/events`` set, the gateway copies client messages to
    /// the backplane's own ``Backplane/eventSink``, when it offers one.
    public init(configuration: GatewayConfiguration, backplane: any Backplane, logger: Logger) {
        var configuration = configuration
        if configuration.events == nil { configuration.events = backplane.eventSink }
        self.configuration = configuration
        self.backplane = backplane
        self.history = configuration.history
        var logger = logger
        logger[metadataKey: LoggingKeys.gatewayID] = .string(configuration.gatewayID)
        self.logger = logger
        self.admission = ConnectionAdmission(
            limits: .init(
                connections: configuration.maximumConnections,
                connectionsPerUser: configuration.maximumConnectionsPerUser,
                connectionsPerAddress: configuration.maximumConnectionsPerAddress
            )
        )
        let registry = self.registry
        self.bindings = BindingReconciler(backplane: backplane, roomGrace: configuration.roomUnbindGrace) { address in
            switch address {
            case .user(let user): registry.isLocal(.user(user))
            case .room(let room): registry.isLocal(.room(room))
            case .broadcast: true
            }
        }
        let metrics = self.metrics
        presence = configuration.presence.map {
            PresenceTracker(
                store: $0,
                gatewayID: configuration.gatewayID,
                backplane: backplane,
                metrics: metrics,
                eventLimit: configuration.presenceEventLimit,
                logger: logger
            )
        }
        let hasHistory = configuration.history != nil
        backplane.setDeliveryHandler { [registry, metrics] deliveries in
            Gateway.deliver(deliveries, registry: registry, metrics: metrics, hasHistory: hasHistory)
        }
    }

    /// Ready for new connections: the backplane is connected, the gateway is not draining,
    /// and it is below its connection cap (so a load balancer sends new clients elsewhere).
    public var isReady: Bool {
        // Not the presence store: without it messages still flow, and `presence` answers
        // `presence_unavailable`; a shared Redis down would otherwise take every gateway out.
        !draining.load(ordering: .relaxed) && backplane.isReady && (history?.isReady ?? true) && !admission.isFull
    }

    /// Whether the gateway holds ``GatewayConfiguration/maximumConnections`` connections.
    public var isFull: Bool { admission.isFull }

    /// Whether a SIGTERM drain has begun.
    public var isDraining: Bool { draining.load(ordering: .relaxed) }

    /// Local connection, user and room counts.
    public var localCounts: (connections: Int, users: Int, rooms: Int) {
        registry.counts
    }

    /// Addresses currently bound on the backplane (tests and metrics).
    public var boundAddressCount: Int { bindings.boundCount }

    /// Whether `user` has a local connection now.
    public func isLocal(user: UserID) -> Bool { registry.isLocal(.user(user)) }

    /// Whether `room` has a local member now.
    public func isLocal(room: RoomID) -> Bool { registry.isLocal(.room(room)) }

    /// Hands frames from the backplane to every local connection of their address.
    ///
    /// A batch from the backplane becomes one task per event loop rather than one per
    /// recipient: each task is a lock, an allocation and perhaps a wake-up of that loop.
    static func deliver(_ deliveries: [BackplaneDelivery], registry: ConnectionRegistry<SessionHandle>, metrics: GatewayMetrics, hasHistory: Bool) {
        var batches = LoopBatches()
        for delivery in deliveries {
            if case .room(let room) = delivery.address, ServerFrame.isPresenceEvent(delivery.frame) {
                // Only to members that asked for events: in a room where none did, an event
                // costs this lookup, not a hop to every member's loop.
                for handle in registry.presenceHandles(for: room) {
                    batches.append(
                        LoopBatches.Item(handle: handle, frame: delivery.frame, address: delivery.address, position: nil, isPresenceEvent: true)
                    )
                }
                continue
            }
            let handles: [SessionHandle]
            let kind: GatewayMetrics.OutboundKind
            switch delivery.address {
            case .user(let user): (handles, kind) = (registry.handles(for: .user(user)), .direct)
            case .room(let room): (handles, kind) = (registry.handles(for: .room(room)), .room)
            case .broadcast: (handles, kind) = (registry.allHandles(), .broadcast)
            }
            guard !handles.isEmpty else { continue }
            // Parsed once for all local recipients; frames from a gateway without history have none.
            let position = !hasHistory || kind == .broadcast ? nil : HistoryFrame.position(of: delivery.frame)
            for handle in handles {
                batches.append(LoopBatches.Item(handle: handle, frame: delivery.frame, address: delivery.address, position: position))
            }
            metrics.sent(kind, count: handles.count)
        }
        batches.run()
    }

    /// Deliveries grouped by the event loop of their session, in arrival order per loop.
    struct LoopBatches {
        struct Item: Sendable {
            let handle: SessionHandle
            let frame: ByteBuffer
            let address: BackplaneAddress
            let position: StreamPosition?
            var isPresenceEvent = false
        }

        // A gateway has a handful of loops: a linear search beats hashing.
        private var loops: [any EventLoop] = []
        private var items: [[Item]] = []

        mutating func append(_ item: Item) {
            let loop = item.handle.eventLoop
            if let index = loops.firstIndex(where: { $0 === loop }) {
                items[index].append(item)
            } else {
                loops.append(loop)
                items.append([item])
            }
        }

        func run() {
            for (loop, batch) in zip(loops, items) {
                if loop.inEventLoop {
                    Self.deliver(batch)
                } else {
                    loop.execute { Self.deliver(batch) }
                }
            }
        }

        /// On the batch's loop: every frame written, then each session that got any flushed
        /// once, so that a client with several frames in the batch gets them in one write.
        private static func deliver(_ batch: [Item]) {
            var written: [SessionHandler] = []
            for item in batch {
                if let session = item.handle.deliverInBatch(
                    item.frame,
                    address: item.address,
                    position: item.position,
                    isPresenceEvent: item.isPresenceEvent
                ) {
                    written.append(session)
                }
            }
            for session in written { session.flushDeferred() }
        }
    }

    /// Releases the bindings of addresses that a registry change made non-local, and counts
    /// the memberships of `user` it ended out of presence.
    func apply(_ change: RegistryChange, user: UserID) {
        for address in change.noLongerLocal {
            bindings.release(Self.backplaneAddress(address), immediately: false)
        }
        if let presence {
            for room in change.endedMemberships { presence.memberLeft(room, user: user) }
        }
    }

    static func backplaneAddress(_ address: LocalAddress) -> BackplaneAddress {
        switch address {
        case .user(let user): .user(user)
        case .room(let room): .room(room)
        }
    }
}
