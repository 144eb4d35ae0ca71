import Foundation
import NIOCore
import ServiceLifecycle
import SwitchboardBackplane
import SwitchboardProtocol
import SwitchboardServer
import SwitchboardTesting
import Synchronization
import Testing

/// A backplane whose user binds never complete until released: a broker that is slow or
/// stalled exactly when a client connects.
final class HeldBindBackplane: Backplane {
    private let inner = InMemoryBackplane()
    private let held = Mutex<[@Sendable () -> Void]>([])

    func setDeliveryHandler(_ handler: @escaping BackplaneDeliveryHandler) { inner.setDeliveryHandler(handler) }

    func bind(_ address: BackplaneAddress, completion: @escaping @Sendable (Result<Void, BackplaneError>) -> Void) {
        guard case .user = address else { return inner.bind(address, completion: completion) }
        let inner = self.inner
        held.withLock { $0.append { inner.bind(address, completion: completion) } }
    }

    func unbind(_ address: BackplaneAddress, completion: @escaping @Sendable (Result<Void, BackplaneError>) -> Void) {
        inner.unbind(address, completion: completion)
    }

    func publish(_ frame: ByteBuffer, to address: BackplaneAddress, completion: @escaping @Sendable (Result<PublishOutcome, BackplaneError>) -> Void) {
        inner.publish(frame, to: address, completion: completion)
    }

    var isReady: Bool { inner.isReady }
    var statistics: BackplaneStatistics { inner.statistics }
    var heldBinds: Int { held.withLock { $0.count } }

    /// Completes every bind held so far.
    func release() {
        for bind in held.withLock({ held in defer { held = [] }; return held }) { bind() }
    }

    func run() async throws { try await inner.run() }
}

@Suite("Session close decisions", .serialized, .timeLimit(.minutes(1)))
struct SessionCloseDefectTests {
    @Test("a drain closes a session whose user binding is still pending with 1012, and it never gets welcome")
    func drainClosesPendingSessions() async throws {
        let backplane = HeldBindBackplane()
        try await withGateway(backplane: backplane, configure: {
            $0.drainGrace = .zero
            $0.drainWindow = .zero
            $0.userBindTimeout = .seconds(30)
        }) { gateway in
            let pending = try await TestClient.connect(port: gateway.port, path: "/ws?user=pending")
            #expect(try await eventually { backplane.heldBinds == 1 })
            await gateway.gateway.drain()
            backplane.release()  // the bind completes after the drain: too late for a welcome
            #expect(try await pending.nextCloseCode() == 1012)
            #expect(gateway.gateway.localCounts.connections == 0)
        }
    }
}
