import NIOCore
import ServiceLifecycle
import SwitchboardBackplane
import SwitchboardClient
import SwitchboardProtocol
import SwitchboardServer
import SwitchboardTesting
import Synchronization
import Testing

/// A backplane whose broker is "down" on demand. It stands in for no real broker: it
/// checks how the gateway maps backplane failures to the wire, which is the gateway's
/// job whatever the backplane (the RabbitMQ tests cover the broker itself).
final class SwitchableBackplane: Backplane {
    private let inner = InMemoryBackplane()
    let isDown = Atomic<Bool>(false)
    /// Binds fail while the backplane still reports ready (a broker that refuses binds).
    let bindsFail = Atomic<Bool>(false)
    /// Publishes fail as a stalled broker's do (`overloaded`) while the backplane is up.
    let stalled = Atomic<Bool>(false)
    /// The worker-events sink this backplane offers, as RabbitMQ with `--events-exchange` does.
    let eventSink: (any EventSink)?

    init(eventSink: (any EventSink)? = nil) {
        self.eventSink = eventSink
    }

    func setDeliveryHandler(_ handler: @escaping BackplaneDeliveryHandler) { inner.setDeliveryHandler(handler) }
    var isReady: Bool { !isDown.load(ordering: .relaxed) && inner.isReady }
    var statistics: BackplaneStatistics { inner.statistics }
    func run() async throws { try await inner.run() }

    private func failure() -> BackplaneError? {
        isDown.load(ordering: .relaxed) ? BackplaneError(.unavailable, "broker down (test)") : nil
    }

    func bind(_ address: BackplaneAddress, completion: @escaping @Sendable (Result<Void, BackplaneError>) -> Void) {
        if let error = failure() { return completion(.failure(error)) }
        if bindsFail.load(ordering: .relaxed) { return completion(.failure(BackplaneError(.unavailable, "bind refused (test)"))) }
        inner.bind(address, completion: completion)
    }

    func unbind(_ address: BackplaneAddress, completion: @escaping @Sendable (Result<Void, BackplaneError>) -> Void) {
        if let error = failure() { return completion(.failure(error)) }
        inner.unbind(address, completion: completion)
    }

    func publish(_ frame: ByteBuffer, to address: BackplaneAddress, completion: @escaping @Sendable (Result<PublishOutcome, BackplaneError>) -> Void)
    {
        if let error = failure() { return completion(.failure(error)) }
        if stalled.load(ordering: .relaxed) { return completion(.failure(BackplaneError(.overloaded, "broker stalled (test)"))) }
        inner.publish(frame, to: address, completion: completion)
    }
}

@Suite("Backplane failures reach the client", .serialized, .timeLimit(.minutes(1)))
struct BackplaneFailureTests {
    @Test("while the backplane is down: sends get backplane_unavailable, joins are undone, /readyz is 503, sockets stay open")
    func unavailable() async throws {
        let backplane = SwitchableBackplane()
        try await withGateway(backplane: backplane) { gateway in
            let alice = try await gateway.connect("alice")
            let bob = try await gateway.connect("bob")
            try await alice.send(#"{"type":"join","room":"lobby"}"#)
            #expect(try await alice.next()["type"] == "ack")

            backplane.isDown.store(true, ordering: .relaxed)
            try await alice.send(#"{"type":"direct","to":"bob","data":1,"id":"d"}"#)
            let directError = try await alice.next()
            #expect(directError["code"] == "backplane_unavailable" && directError["id"] == "d")
            try await alice.send(#"{"type":"publish","room":"lobby","data":1,"id":"p"}"#)
            #expect(try await alice.next()["code"] == "backplane_unavailable")
            try await bob.send(#"{"type":"join","room":"games","id":"j"}"#)
            #expect(try await bob.next()["code"] == "backplane_unavailable")
            #expect(!gateway.gateway.isLocal(room: try .init(validating: "games")))
            let ready = try await gateway.get("/readyz")
            #expect(ready.status == 503)
            try await bob.expectSilence(for: .milliseconds(100))

            backplane.isDown.store(false, ordering: .relaxed)
            try await alice.send(#"{"type":"direct","to":"bob","data":2,"id":"d2"}"#)
            #expect(try await bob.next()["data"] == "2")
            #expect(try await alice.next()["type"] == "ack")
            await alice.close()
            await bob.close()
        }
    }

    @Test("a stalled backplane (overloaded): sends get backplane_unavailable saying so, and the connection stays usable")
    func overloaded() async throws {
        let backplane = SwitchableBackplane()
        try await withGateway(backplane: backplane) { gateway in
            let alice = try await gateway.connect("alice")
            let bob = try await gateway.connect("bob")
            backplane.stalled.store(true, ordering: .relaxed)
            try await alice.send(#"{"type":"direct","to":"bob","data":1,"id":"s"}"#)
            let error = try await alice.next()
            #expect(error["code"] == "backplane_unavailable" && error["id"] == "s")
            #expect(error["message"]?.contains("stalled") == true, "\(error)")
            backplane.stalled.store(false, ordering: .relaxed)
            try await alice.send(#"{"type":"direct","to":"bob","data":2,"id":"t"}"#)
            #expect(try await bob.next()["data"] == "2")
            #expect(try await alice.next()["id"] == "t")
            await alice.close()
            await bob.close()
        }
    }

    @Test("a connection whose user cannot be bound gets backplane_unavailable, then close 1013")
    func bindFailureAtConnect() async throws {
        let backplane = SwitchableBackplane()
        try await withGateway(backplane: backplane) { gateway in
            backplane.bindsFail.store(true, ordering: .relaxed)
            let bob = try await TestClient.connect(port: gateway.port, path: "/ws?user=bob")
            let error = try await bob.next()
            #expect(error["type"] == "error" && error["code"] == "backplane_unavailable")
            #expect(try await bob.nextCloseCode() == 1013)
            #expect(try await eventually { gateway.gateway.localCounts.connections == 0 })
        }
    }

    @Test("while not ready, new handshakes are refused with 503")
    func notReadyRefusesHandshakes() async throws {
        let backplane = SwitchableBackplane()
        try await withGateway(backplane: backplane) { gateway in
            backplane.isDown.store(true, ordering: .relaxed)
            do {
                _ = try await TestClient.connect(port: gateway.port, path: "/ws?user=bob")
                Issue.record("handshake accepted while not ready")
            } catch let HandshakeError.refused(status, _) {
                #expect(status == 503)
            }
        }
    }
}
