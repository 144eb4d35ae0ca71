import Foundation
import SwitchboardBackplane
import SwitchboardProtocol
import SwitchboardTesting
import Synchronization
import Testing

@testable import SwitchboardServer

@Suite("Connection admission (caps decided in one step)")
struct AdmissionStateTests {
    @Test("gateway, user and address caps; a release makes room again; equivalent ids are different users")
    func caps() throws {
        var state = AdmissionState(limits: .init(connections: 4, connectionsPerUser: 2, connectionsPerAddress: 3))
        let alice = try UserID(validating: "Kate")
        let lookalike = try UserID(validating: "\u{212A}ate")
        #expect(state.admit(user: alice, address: "a") == .admitted)
        #expect(state.admit(user: alice, address: "a") == .admitted)
        #expect(state.admit(user: alice, address: "b") == .userLimit)
        #expect(state.admit(user: lookalike, address: "a") == .admitted)
        #expect(state.admit(user: try UserID(validating: "x"), address: "a") == .addressLimit)
        #expect(state.admit(user: try UserID(validating: "y"), address: "b") == .admitted)
        #expect(state.isFull)
        #expect(state.admit(user: try UserID(validating: "z"), address: "c") == .gatewayFull)
        state.release(user: alice, address: "a")
        #expect(!state.isFull)
        #expect(state.connections(of: alice) == 1)
        #expect(state.admit(user: alice, address: "c") == .admitted)
    }
}

@Suite("Credentials never reach logs or errors")
struct CredentialRedactionTests {
    @Test(
        "every URL form is redacted",
        arguments: [
            ("amqp://gw:s3cret@127.0.0.1:5672/", "amqp://gw:***@127.0.0.1:5672/"),
            ("amqps://gw:s3cret@broker:5671/vhost?cacertfile=/ca.pem", "amqps://gw:***@broker:5671/vhost?cacertfile=/ca.pem"),
            ("redis://:s3cret@127.0.0.1:6379", "redis://:***@127.0.0.1:6379"),
            ("redis://s3cret@127.0.0.1:6379?mode=channels", "redis://***@127.0.0.1:6379?mode=channels"),
            ("redis://app:s3cret@127.0.0.1:6379", "redis://app:***@127.0.0.1:6379"),
            ("amqp://gw:s3c?ret@127.0.0.1/", "amqp://gw:***@127.0.0.1/"),
            ("amqp://gw:s3c/ret@127.0.0.1/", "amqp://gw:***@127.0.0.1/"),
            ("amqp://gw:s3c,ret@h1/", "amqp://gw:***@h1/"),
            ("amqp://a:s3cret@h1/,amqp://b:s3cret@h2/", "amqp://a:***@h1/,amqp://b:***@h2/"),
            ("amqp://a:s3cret@h1/, amqps://b:s3c,ret@h2/", "amqp://a:***@h1/, amqps://b:***@h2/"),
            ("memory", "memory"),
            ("amqp://127.0.0.1/", "amqp://127.0.0.1/"),
        ]
    )
    func redacted(url: String, expected: String) {
        let redacted = CredentialRedaction.redact(url)
        #expect(redacted == expected)
        #expect(!redacted.contains("s3c"))
    }

    @Test("a raw '?', '/' or '#' in a password is refused before parsing, without quoting it")
    func reservedCharacters() {
        for url in ["amqp://gw:zq?xy@127.0.0.1/", "redis://zq/xy@127.0.0.1", "amqps://gw:zq#xy@h/"] {
            let problem = CredentialRedaction.reservedCharacterProblem(in: url)
            #expect(problem != nil)
            #expect(problem?.contains("zq") == false)
            #expect(problem?.contains("xy") == false)
        }
        #expect(CredentialRedaction.reservedCharacterProblem(in: "amqp://gw:pa%3Fss@127.0.0.1/?heartbeat=5") == nil)
    }
}

@Suite("Binding grace for rooms")
struct BindingGraceTests {
    @Test("a room unbinds after its grace; a re-join within it costs nothing; users unbind at once; a drain skips the grace")
    func grace() async throws {
        let backplane = InMemoryBackplane()
        let wanted = WantedSet()
        let reconciler = BindingReconciler(backplane: backplane, roomGrace: .milliseconds(300)) { wanted.contains($0) }
        let room = BackplaneAddress.room(try RoomID(validating: "lobby"))
        let user = BackplaneAddress.user(try UserID(validating: "bob"))
        for address in [room, user] {
            wanted.set(address, true)
            try await withCheckedThrowingContinuation { continuation in
                reconciler.ensureBound(address) { continuation.resume(with: $0) }
            }
        }
        #expect(backplane.statistics.binds == 2)
        wanted.set(room, false)
        wanted.set(user, false)
        reconciler.release(room, immediately: false)
        reconciler.release(user, immediately: false)
        #expect(backplane.statistics.unbinds == 1, "the user at once, the room not yet")
        wanted.set(room, true)
        try await withCheckedThrowingContinuation { continuation in
            reconciler.ensureBound(room) { continuation.resume(with: $0) }
        }
        #expect(backplane.statistics.binds == 2, "re-joined within the grace: no bind")
        wanted.set(room, false)
        reconciler.release(room, immediately: false)
        #expect(try await eventually(timeout: .seconds(3)) { backplane.statistics.unbinds == 2 }, "unbound when the grace ended")
        #expect(!reconciler.isTracking(room))

        wanted.set(room, true)
        try await withCheckedThrowingContinuation { continuation in
            reconciler.ensureBound(room) { continuation.resume(with: $0) }
        }
        wanted.set(room, false)
        reconciler.release(room, immediately: true)
        #expect(backplane.statistics.unbinds == 3, "a drain unbinds at once")
    }

    final class WantedSet: Sendable {
        private let addresses = Mutex<Set<BackplaneAddress>>([])
        func set(_ address: BackplaneAddress, _ wanted: Bool) {
            addresses.withLock { addresses in
                if wanted { addresses.insert(address) } else { addresses.remove(address) }
            }
        }
        func contains(_ address: BackplaneAddress) -> Bool { addresses.withLock { $0.contains(address) } }
    }
}
