import Foundation
import Histogram
import NIOCore
import NIOPosix

/// The traffic scenarios' load generator: every connection, every send and every receive
/// on one event loop thread, with a hand-written WebSocket client (RFC 6455, client side:
/// upgrade request, masked frames with a zero key, unmasked server frames).
///
/// On a 2-core machine the load generator competes with what it measures. The general
/// client (`WebSocketConnection`: a task and an `AsyncStream` per connection, an awaited
/// future per send, a `String` per frame, a lock per record) cost about as much CPU per
/// message as the gateways it measured. Here a message costs one frame written into the
/// connection's buffer, one flush per connection per millisecond tick, and a scan of the
/// received bytes for the sequence number and the send stamp: no task, no lock, no
/// `String`. `bench connect`, `idle` and `resume` still use the general client: they
/// measure connections, not messages.
final class LeanFleet: @unchecked Sendable {
    // @unchecked Sendable: every mutable field is touched only on `loop` (one thread); the
    // async side reads results through futures that complete on that loop.

    let loop: any EventLoop
    private let group: MultiThreadedEventLoopGroup
    private(set) var channels: [(any Channel)?]
    private(set) var connectSeconds = 0.0
    var connected: Int { welcomed }
    private var welcomed = 0

    /// Deliveries counted per sequence number, and their latency; loop-confined.
    private(set) var counts: [UInt16] = []
    private(set) var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    private(set) var arrived = 0
    private(set) var acks = 0
    let origin = ContinuousClock.now

    private init(users: Int) {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        loop = group.next()
        channels = Array(repeating: nil, count: users)
        handlerWelcomed = Array(repeating: false, count: users)
    }

    /// Microseconds since the fleet began: the send stamp carried in each message.
    var now: UInt64 { UInt64(max(0, (ContinuousClock.now - origin).seconds * 1_000_000)) }

    /// Opens `options.users` connections, `connectConcurrency` at a time, each counted once
    /// its `welcome` arrived; at most 120 s.
    static func open(_ options: LoadOptions, capacity: Int) async throws -> LeanFleet {
        OpenFileLimit.raise()
        let endpoints = try options.endpoints()
        let fleet = LeanFleet(users: options.users)
        let started = ContinuousClock.now
        let done = fleet.loop.makePromise(of: Void.self)
        fleet.loop.execute {
            fleet.counts = [UInt16](repeating: 0, count: capacity)
            var next = 0
            var finished = 0
            var completed = false
            let deadline = NIODeadline.now() + .seconds(120)
            func complete() {
                guard !completed else { return }
                completed = true
                done.succeed()
            }
            // A gateway that accepts and never answers must not hold the run forever.
            fleet.loop.scheduleTask(deadline: deadline + .seconds(10)) { complete() }
            func startOne() {
                guard next < options.users, NIODeadline.now() < deadline else { return }
                let index = next
                next += 1
                let endpoint = endpoints[Fleet.gateway(of: index, gateways: endpoints.count)]
                let handler = LeanConnectionHandler(
                    fleet: fleet,
                    index: index,
                    host: endpoint.host,
                    path: "\(endpoint.path)?user=\(Fleet.user(index))"
                )
                handler.onWelcome = { welcomed in
                    // A welcome after the deadline does not count: the run has started.
                    if welcomed, !completed { fleet.welcomed += 1 }
                    finished += 1
                    if finished == options.users || (next == finished && NIODeadline.now() >= deadline) {
                        complete()
                    } else {
                        startOne()
                    }
                }
                var bootstrap = ClientBootstrap(group: fleet.loop).channelOption(.tcpOption(.tcp_nodelay), value: 1)
                    .connectTimeout(.seconds(10))
                    .channelInitializer { channel in channel.pipeline.addHandler(handler) }
                if options.sourceAddresses > 1, let source = try? SocketAddress(ipAddress: "127.0.0.\(1 + index % options.sourceAddresses)", port: 0)
                {
                    bootstrap = bootstrap.bind(to: source)
                }
                bootstrap.connect(host: endpoint.host, port: endpoint.port).whenComplete { result in
                    switch result {
                    case .success(let channel) where completed:
                        // Past the deadline: the run has started without this one.
                        channel.close(promise: nil)
                    case .success(let channel): fleet.channels[index] = channel
                    case .failure: handler.finish(welcomed: false)
                    }
                }
            }
            for _ in 0..<min(options.connectConcurrency, options.users) { startOne() }
        }
        try await done.futureResult.get()
        fleet.connectSeconds = (ContinuousClock.now - started).seconds
        // Connections whose handshake failed leave no channel behind.
        try await fleet.loop.submit {
            for (index, channel) in fleet.channels.enumerated() where channel != nil && !(fleet.handlerWelcomed[index]) {
                channel?.close(promise: nil)
                fleet.channels[index] = nil
            }
        }.get()
        return fleet
    }

    /// Per connection: its welcome arrived.
    fileprivate var handlerWelcomed: [Bool] = []

    fileprivate func markWelcomed(_ index: Int) {
        handlerWelcomed[index] = true
    }

    /// Called on the loop for every text frame after the welcome.
    fileprivate func received(_ payload: UnsafeRawBufferPointer) {
        if payload.starts(with: Self.ackPrefix) {
            acks += 1
            return
        }
        guard payload.starts(with: Self.directPrefix) || payload.starts(with: Self.roomPrefix) else { return }
        guard let (sequence, stamp) = Self.sequenceAndStamp(in: payload) else { return }
        let arrival = now
        arrived += 1
        if sequence < counts.count { counts[sequence] &+= 1 }
        _ = histogram.record(arrival >= stamp ? arrival - stamp : 0)
    }

    private static let ackPrefix = Array(#"{"type":"ack""#.utf8)
    private static let directPrefix = Array(#"{"type":"direct""#.utf8)
    private static let roomPrefix = Array(#"{"type":"room""#.utf8)
    private static let sequenceKey = Array(#"{"s":"#.utf8)

    /// `{"s":SEQ,"t":MICROS}` inside the frame: the data of a message from ``payload(sequence:)``.
    static func sequenceAndStamp(in payload: UnsafeRawBufferPointer) -> (Int, UInt64)? {
        let key = sequenceKey
        guard payload.count > key.count else { return nil }
        var start = 0
        while start + key.count <= payload.count {
            if payload[start] == key[0], payload[start..<(start + key.count)].elementsEqual(key) { break }
            start += 1
        }
        var index = start + key.count
        guard index < payload.count else { return nil }
        func digits() -> UInt64? {
            var value: UInt64 = 0
            var count = 0
            while index < payload.count, payload[index] >= 48, payload[index] <= 57, count < 19 {
                value = value * 10 + UInt64(payload[index] - 48)
                index += 1
                count += 1
            }
            return count > 0 ? value : nil
        }
        guard let sequence = digits() else { return nil }
        // `,"t":`
        index += 5
        guard index < payload.count, let stamp = digits() else { return nil }
        return (Int(sequence), stamp)
    }

    /// `{"s":SEQ,"t":MICROS}` as the data of a message.
    func payload(sequence: Int) -> String { #"{"s":"# + String(sequence) + #","t":"# + String(now) + "}" }

    /// Writes `text` as a masked text frame to user `index`'s connection (on the loop; not flushed).
    func write(_ text: String, to index: Int) -> (any Channel)? {
        guard let channel = channels[index] else { return nil }
        var buffer = channel.allocator.buffer(capacity: text.utf8.count + 14)
        let length = text.utf8.count
        buffer.writeInteger(UInt8(0x81))
        if length < 126 {
            buffer.writeInteger(UInt8(0x80 | length))
        } else if length <= 0xFFFF {
            buffer.writeInteger(UInt8(0x80 | 126))
            buffer.writeInteger(UInt16(length))
        } else {
            buffer.writeInteger(UInt8(0x80 | 127))
            buffer.writeInteger(UInt64(length))
        }
        // A zero masking key: the payload goes as it is (RFC 6455 5.3 allows any key).
        buffer.writeInteger(UInt32(0))
        buffer.writeString(text)
        channel.write(buffer, promise: nil)
        return channel
    }

    func delivered(expectedPerMessage: Int, sent: Int) -> (delivered: Int, lost: Int, duplicated: Int) {
        var delivered = 0
        var lost = 0
        var duplicated = 0
        for sequence in 0..<min(sent, counts.count) {
            let count = Int(counts[sequence])
            delivered += min(count, expectedPerMessage)
            lost += max(0, expectedPerMessage - count)
            duplicated += max(0, count - expectedPerMessage)
        }
        return (delivered, lost, duplicated)
    }

    var latency: LoadResult.Latency { LoadResult.Latency(histogram) }

    /// Runs `body` on the loop and returns its result.
    func onLoop<T: Sendable>(_ body: @escaping @Sendable () -> T) async throws -> T {
        try await loop.submit(body).get()
    }

    func closeAll() async {
        _ = try? await loop.submit {
            for channel in self.channels { channel?.close(promise: nil) }
        }.get()
        try? await group.shutdownGracefully()
    }
}

/// One connection of a ``LeanFleet``: the upgrade, then frame parsing; on the fleet's loop.
private final class LeanConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let fleet: LeanFleet
    private let index: Int
    private let host: String
    private let path: String
    private var upgraded = false
    private var buffer = ByteBuffer()
    private var finished = false
    var onWelcome: (Bool) -> Void = { _ in }

    init(fleet: LeanFleet, index: Int, host: String, path: String) {
        self.fleet = fleet
        self.index = index
        self.host = host
        self.path = path
    }

    func finish(welcomed: Bool) {
        guard !finished else { return }
        finished = true
        if welcomed { fleet.markWelcomed(index) }
        onWelcome(welcomed)
    }

    func channelActive(context: ChannelHandlerContext) {
        let request =
            "GET \(path) HTTP/1.1\r\nHost: \(host)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        context.writeAndFlush(NIOAny(context.channel.allocator.buffer(string: request)), promise: nil)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(welcomed: false)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        buffer.writeBuffer(&incoming)
        if !upgraded {
            guard let end = buffer.readableBytesView.firstRange(of: Array("\r\n\r\n".utf8)) else { return }
            let head = buffer.readString(length: end.upperBound - buffer.readerIndex) ?? ""
            guard head.hasPrefix("HTTP/1.1 101") else {
                context.close(promise: nil)
                return
            }
            upgraded = true
        }
        parseFrames(context: context)
        buffer.discardReadBytes()
    }

    private func parseFrames(context: ChannelHandlerContext) {
        while buffer.readableBytes >= 2 {
            let start = buffer.readerIndex
            guard let first = buffer.getInteger(at: start, as: UInt8.self), let second = buffer.getInteger(at: start + 1, as: UInt8.self) else {
                return
            }
            var headerLength = 2
            var length = Int(second & 0x7F)
            if length == 126 {
                guard let extended = buffer.getInteger(at: start + 2, as: UInt16.self) else { return }
                length = Int(extended)
                headerLength = 4
            } else if length == 127 {
                guard let extended = buffer.getInteger(at: start + 2, as: UInt64.self) else { return }
                length = Int(min(extended, UInt64(Int32.max)))
                headerLength = 10
            }
            guard buffer.readableBytes >= headerLength + length else { return }
            let opcode = first & 0x0F
            buffer.withUnsafeReadableBytes { raw in
                let payload = UnsafeRawBufferPointer(rebasing: raw[headerLength..<(headerLength + length)])
                switch opcode {
                case 0x1:
                    if !finished {
                        finish(welcomed: payload.starts(with: Array(#"{"type":"welcome""#.utf8)))
                    } else {
                        fleet.received(payload)
                    }
                case 0x9:
                    // Ping: answer with a pong carrying the same payload.
                    var pong = context.channel.allocator.buffer(capacity: length + 6)
                    pong.writeInteger(UInt8(0x8A))
                    pong.writeInteger(UInt8(0x80 | min(length, 125)))
                    pong.writeInteger(UInt32(0))
                    pong.writeBytes(UnsafeRawBufferPointer(rebasing: payload.prefix(125)))
                    context.writeAndFlush(NIOAny(pong), promise: nil)
                case 0x8:
                    context.close(promise: nil)
                default:
                    break
                }
            }
            buffer.moveReaderIndex(forwardBy: headerLength + length)
        }
    }
}
