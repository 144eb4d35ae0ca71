import Logging
import NIOCore
import ServiceLifecycle
import SwitchboardBackplane
import SwitchboardProtocol
import Synchronization
import Testing

@testable import SwitchboardServer

/// A store that records every call and answers a sync only when the test says so.
final class HeldPresenceStore: PresenceStore {
    let policy = PresencePolicy(ttl: .seconds(60), grace: .seconds(5))
    private let state = Mutex<(calls: [String], held: [@Sendable (Bool) -> Void])>(([], []))

    var isReady: Bool { true }
    func run() async throws {}

    var calls: [String] { state.withLock { $0.calls } }

    func sync(
        _ room: RoomID,
        gateway: String,
        entries: [PresenceEntry],
        completion: @escaping @Sendable (Result<PresenceChanges, PresenceError>) -> Void
    ) {
        let text = entries.map { "\($0.user)=\($0.connections)" }.sorted().joined(separator: ",")
        state.withLock {
            $0.calls.append("sync \(room) [\(text)]")
            $0.held.append { fails in completion(fails ? .failure(PresenceError("down")) : .success(PresenceChanges())) }
        }
    }

    func read(_ room: RoomID, limit: Int, completion: @escaping @Sendable (Result<PresenceSnapshot, PresenceError>) -> Void) {
        state.withLock { $0.calls.append("read \(room)") }
        completion(.success(PresenceSnapshot(users: [], count: 0)))
    }

    /// Answers the oldest sync still held (with a failure when `failing`); false when none is.
    @discardableResult
    func answerNext(failing: Bool = false) -> Bool {
        let next: (@Sendable (Bool) -> Void)? = state.withLock { $0.held.isEmpty ? nil : $0.held.removeFirst() }
        next?(failing)
        return next != nil
    }
}

@Suite("Presence tracker: one write per room at a time, reads behind it")
struct PresenceTrackerTests {
    let lobby = try! RoomID(validating: "lobby")
    let alice = try! UserID(validating: "alice")
    let bob = try! UserID(validating: "bob")

    func tracker(_ store: HeldPresenceStore) -> PresenceTracker {
        PresenceTracker(
            store: store,
            gatewayID: "gw",
            backplane: InMemoryBackplane(),
            metrics: GatewayMetrics(),
            eventLimit: 100,
            logger: Logger(label: "test")
        )
    }

    @Test("changes made while a write is out go together in the next one, with the counts of that moment")
    func batching() {
        let store = HeldPresenceStore()
        let tracker = tracker(store)
        tracker.memberJoined(lobby, user: alice)
        tracker.memberJoined(lobby, user: bob)
        tracker.memberJoined(lobby, user: alice)
        tracker.memberLeft(lobby, user: bob)
        #expect(store.calls == ["sync lobby [alice=1]"], "one write out at a time")
        store.answerNext()
        #expect(store.calls == ["sync lobby [alice=1]", "sync lobby [alice=2,bob=0]"])
        #expect(tracker.entryCount == 1)
        store.answerNext()
        #expect(!store.answerNext(), "nothing more to write")
    }

    @Test("a failed write is put back: not retried in a loop, written again by the next refresh")
    func failure() {
        let store = HeldPresenceStore()
        let tracker = tracker(store)
        tracker.memberJoined(lobby, user: alice)
        tracker.memberLeft(lobby, user: alice)
        store.answerNext()
        #expect(store.calls == ["sync lobby [alice=1]", "sync lobby [alice=0]"])
        store.answerNext(failing: true)
        #expect(!store.answerNext(), "no retry at once")
        tracker.refresh()
        #expect(store.calls.last == "sync lobby [alice=0]" && store.calls.count == 3, "the departure is written again, though nothing is local")
        store.answerNext()
        tracker.refresh()
        #expect(store.calls.count == 3, "nothing left to write")
    }

    @Test("a refresh during a write goes behind it; a read waits for the write out, then sees it")
    func refreshAndRead() {
        let store = HeldPresenceStore()
        let tracker = tracker(store)
        tracker.memberJoined(lobby, user: alice)
        tracker.refresh()
        tracker.read(lobby, limit: 10) { _ in }
        // A close racing the refresh: its count must not be overtaken by the refresh's.
        tracker.memberLeft(lobby, user: alice)
        #expect(store.calls == ["sync lobby [alice=1]"])
        store.answerNext()
        #expect(store.calls == ["sync lobby [alice=1]", "sync lobby [alice=0]", "read lobby"], "the read goes right behind the batch")
        store.answerNext()
        #expect(tracker.entryCount == 0)
        tracker.read(lobby, limit: 10) { _ in }
        #expect(store.calls.last == "read lobby" && store.calls.count == 4, "with nothing out, a read goes at once")
    }
}
