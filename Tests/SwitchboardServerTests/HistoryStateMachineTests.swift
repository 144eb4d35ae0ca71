import Foundation
import NIOCore
import SwitchboardBackplane
import SwitchboardProtocol
import SwitchboardRegistry
import Synchronization
import Testing

@testable import SwitchboardServer

/// Offsets, order, resume and join with `since`, decided by the session state machine
/// without sockets; the history store's answers are made up.
@Suite("Session state machine with history")
struct HistoryStateMachineTests {
    typealias Action = SessionStateMachine.Action
    typealias Unit = SessionStateMachineTests

    static let epoch = "e1"
    static let alice = BackplaneAddress.user(try! UserID(validating: "alice"))
    static let lobby = try! RoomID(validating: "lobby")

    static func withHistory(_ configuration: inout GatewayConfiguration) {
        configuration.history = MemoryHistory()
        configuration.recoveryLimit = 50
    }

    /// A machine past `welcome` at `top` of its user stream.
    static func open(top: UInt64 = 10) throws -> (SessionStateMachine, [Action]) {
        var machine = try Unit.machine(configure: withHistory)
        _ = machine.started(wallClock: 0)
        let bound = machine.userBindCompleted(.success(()))
        #expect(reads(bound) == [Read(address: alice, after: nil, purpose: .welcome)])
        #expect(machine.phase == .connecting, "the welcome waits for the position")
        let opened = answer(&machine, alice, purpose: .welcome, .success(range(top: top)))
        return (machine, opened)
    }

    static func range(top: UInt64, epoch: String = epoch, _ offsets: ClosedRange<UInt64>? = nil) -> HistoryRange {
        HistoryRange(
            top: StreamPosition(epoch: epoch, offset: top),
            entries: (offsets.map(Array.init) ?? []).map { HistoryEntry(offset: $0, frame: message($0)) }
        )
    }

    static func message(_ offset: UInt64) -> ByteBuffer { ByteBuffer(string: "m\(offset)") }

    static func deliver(
        _ machine: inout SessionStateMachine,
        _ offset: UInt64,
        to address: BackplaneAddress = alice,
        epoch: String = epoch
    ) -> [Action] {
        machine.deliver(message(offset), address: address, position: StreamPosition(epoch: epoch, offset: offset))
    }

    struct Read: Equatable {
        var address: BackplaneAddress
        var after: UInt64?
        var purpose: StreamCursor.Purpose
    }

    static func reads(_ actions: [Action]) -> [Read] {
        actions.compactMap {
            if case .readHistory(let read) = $0 { Read(address: read.address, after: read.after, purpose: read.purpose) } else { nil }
        }
    }

    /// Feeds the result of the read the cursor at `address` waits for.
    static func answer(
        _ machine: inout SessionStateMachine,
        _ address: BackplaneAddress,
        purpose: StreamCursor.Purpose,
        _ result: Result<HistoryRange, HistoryError>
    ) -> [Action] {
        let token = machine.streams[address]?.awaitedRead ?? -1
        return machine.historyRead(.init(address: address, after: nil, purpose: purpose, token: token), result: result)
    }

    static func gapChecks(_ actions: [Action]) -> Int {
        actions.filter { if case .scheduleGapCheck = $0 { true } else { false } }.count
    }

    @Test("welcome carries the top of the user stream; messages held before it go out above the top, in order")
    func welcomePosition() throws {
        var machine = try Unit.machine(configure: Self.withHistory)
        _ = machine.started(wallClock: 0)
        _ = machine.userBindCompleted(.success(()))
        for offset: UInt64 in [12, 9, 11, 10] { #expect(Self.deliver(&machine, offset).isEmpty) }
        let opened = Self.answer(&machine, Self.alice, purpose: .welcome, .success(Self.range(top: 10)))
        #expect(
            Unit.texts(opened) == [#"{"type":"welcome","user":"alice","gateway":"gw-test","position":{"epoch":"e1","offset":10}}"#, "m11", "m12"]
        )
    }

    @Test("a history store that is down at connect: history_unavailable, then 1013")
    func welcomeReadFails() throws {
        var machine = try Unit.machine(configure: Self.withHistory)
        _ = machine.started(wallClock: 0)
        _ = machine.userBindCompleted(.success(()))
        let refused = Self.answer(&machine, Self.alice, purpose: .welcome, .failure(HistoryError("down")))
        #expect(Unit.errorCodes(refused) == ["history_unavailable"])
        #expect(Unit.sentClose(refused)?.code == 1013)
    }

    @Test("out of order: 12 waits for 11, then both go in order; a duplicate is dropped")
    func reorder() throws {
        var (machine, _) = try Self.open(top: 10)
        let early = Self.deliver(&machine, 12)
        #expect(Unit.texts(early).isEmpty)
        #expect(Self.gapChecks(early) == 1)
        #expect(Unit.texts(Self.deliver(&machine, 11)) == ["m11", "m12"])
        #expect(Unit.texts(Self.deliver(&machine, 11)).isEmpty)
        #expect(Unit.texts(Self.deliver(&machine, 13)) == ["m13"])
        // The wait passed with nothing missing: no read.
        #expect(Self.reads(machine.gapCheck(Self.alice)).isEmpty)
    }

    @Test("a gap that does not fill within the wait is read from history, each message once, in order")
    func gapFilledFromHistory() throws {
        var (machine, _) = try Self.open(top: 10)
        _ = Self.deliver(&machine, 13)
        _ = Self.deliver(&machine, 12)
        #expect(Self.reads(machine.gapCheck(Self.alice)) == [Read(address: Self.alice, after: 10, purpose: .gap)])
        // 14 arrives while the read is out: it waits too.
        #expect(Unit.texts(Self.deliver(&machine, 14)).isEmpty)
        let filled = Self.answer(&machine, Self.alice, purpose: .gap, .success(Self.range(top: 13, 11...13)))
        #expect(Unit.texts(filled) == ["m11", "m12", "m13", "m14"])
        #expect(Unit.texts(Self.deliver(&machine, 15)) == ["m15"])
    }

    @Test("a gap history no longer holds, or a new epoch while live: closed with 1013 so the client resumes")
    func insufficientState() throws {
        var (machine, _) = try Self.open(top: 10)
        _ = Self.deliver(&machine, 12)
        _ = machine.gapCheck(Self.alice)
        let lost = Self.answer(&machine, Self.alice, purpose: .gap, .success(Self.range(top: 12, 12...12)))
        #expect(Unit.texts(lost).isEmpty)
        #expect(Unit.sentClose(lost)?.code == 1013)
        #expect(Unit.endReason(lost) == .history)

        var (other, _) = try Self.open(top: 10)
        let reborn = Self.deliver(&other, 1, epoch: "e2")
        #expect(Unit.sentClose(reborn)?.code == 1013)
    }

    @Test("resume replays what this connection has not had, in order, once, then acks recovered with the top")
    func resumeRecovered() throws {
        var (machine, _) = try Self.open(top: 10)
        #expect(Unit.texts(Self.deliver(&machine, 11)) == ["m11"], "live after welcome")
        let asked = machine.frameReceived(Unit.text(#"{"type":"resume","since":{"epoch":"e1","offset":5},"id":"r1"}"#), now: Unit.start)
        #expect(
            Self.reads(asked) == [
                Read(
                    address: Self.alice,
                    after: 5,
                    purpose: .resume(correlationID: CorrelationID(jsonText: #""r1""#), since: StreamPosition(epoch: "e1", offset: 5))
                )
            ]
        )
        #expect(Unit.texts(Self.deliver(&machine, 13)).isEmpty, "live messages wait while the resume is served")
        let served = Self.answer(
            &machine,
            Self.alice,
            purpose: .resume(correlationID: CorrelationID(jsonText: #""r1""#), since: StreamPosition(epoch: "e1", offset: 5)),
            .success(Self.range(top: 12, 6...12))
        )
        #expect(
            Unit.texts(served) == [
                "m6", "m7", "m8", "m9", "m10", "m12", #"{"type":"ack","id":"r1","recovered":true,"position":{"epoch":"e1","offset":12}}"#, "m13",
            ]
        )
        #expect(served.contains { if case .countRecovery("recovered", 6) = $0 { true } else { false } })
        let again = machine.frameReceived(Unit.text(#"{"type":"resume","since":{"epoch":"e1","offset":5},"id":"r2"}"#), now: Unit.start)
        #expect(Unit.errorCodes(again) == ["already_resumed"])
    }

    @Test(
        "not recovered: nothing is replayed, the ack says why and gives the top",
        arguments: [
            (StreamPosition(epoch: "old", offset: 5), HistoryStateMachineTests.range(top: 12, 6...12), "epoch_changed"),
            (StreamPosition(epoch: "e1", offset: 5), HistoryStateMachineTests.range(top: 12, 8...12), "expired"),
            (StreamPosition(epoch: "e1", offset: 5), HistoryStateMachineTests.range(top: 100), "limit_exceeded"),
            (StreamPosition(epoch: "e1", offset: 50), HistoryStateMachineTests.range(top: 12), "ahead"),
        ]
    )
    func resumeNotRecovered(since: StreamPosition, range: HistoryRange, reason: String) throws {
        var (machine, _) = try Self.open(top: 10)
        let purpose = StreamCursor.Purpose.resume(correlationID: nil, since: since)
        _ = machine.frameReceived(
            Unit.text(#"{"type":"resume","since":{"epoch":""# + since.epoch + #"","offset":"# + String(since.offset) + "}}"),
            now: Unit.start
        )
        let served = Self.answer(&machine, Self.alice, purpose: purpose, .success(range))
        #expect(
            Unit.texts(served) == [
                #"{"type":"ack","recovered":false,"reason":""# + reason + #"","position":{"epoch":"e1","offset":"# + String(range.top.offset) + "}}"
            ]
        )
        // The connection carries on from the top.
        #expect(Unit.texts(Self.deliver(&machine, range.top.offset + 1)) == ["m\(range.top.offset + 1)"])
    }

    @Test("resume with history off is history_disabled; join with since too")
    func historyOff() throws {
        var machine = try Unit.open()
        let resume = machine.frameReceived(Unit.text(#"{"type":"resume","since":{"epoch":"e","offset":1},"id":1}"#), now: Unit.start)
        #expect(Unit.errorCodes(resume) == ["history_disabled"])
        let join = machine.frameReceived(Unit.text(#"{"type":"join","room":"lobby","since":{"epoch":"e","offset":1},"id":2}"#), now: Unit.start)
        #expect(Unit.errorCodes(join) == ["history_disabled"])
        // Frames carry no position with history off: written as they come.
        #expect(Unit.texts(machine.deliver(ByteBuffer(string: "x"), address: Self.alice, position: nil)) == ["x"])
    }

    @Test("a join's ack carries the room's position; a join with since replays first; since on a forbidden room is forbidden")
    func joins() throws {
        var (machine, _) = try Self.open()
        let room = BackplaneAddress.room(Self.lobby)
        let joined = machine.frameReceived(Unit.text(#"{"type":"join","room":"lobby","id":"j1"}"#), now: Unit.start)
        #expect(joined.contains { if case .register = $0 { true } else { false } })
        _ = machine.joinRegistered(
            Self.lobby,
            correlationID: CorrelationID(jsonText: #""j1""#),
            wasMember: false,
            result: .joined(roomBecameLocal: true)
        )
        // A message for the room before its position is known waits.
        #expect(Unit.texts(Self.deliver(&machine, 4, to: room)).isEmpty)
        let bound = machine.roomBindCompleted(Self.lobby, correlationID: CorrelationID(jsonText: #""j1""#), result: .success(()))
        let purpose = StreamCursor.Purpose.join(correlationID: CorrelationID(jsonText: #""j1""#), since: nil)
        #expect(Self.reads(bound) == [Read(address: room, after: nil, purpose: purpose)])
        let acked = Self.answer(&machine, room, purpose: purpose, .success(Self.range(top: 3)))
        #expect(Unit.texts(acked) == [#"{"type":"ack","id":"j1","position":{"epoch":"e1","offset":3}}"#, "m4"])

        var (resuming, _) = try Self.open()
        let since = StreamPosition(epoch: "e1", offset: 1)
        _ = resuming.frameReceived(Unit.text(#"{"type":"join","room":"lobby","since":{"epoch":"e1","offset":1},"id":"j2"}"#), now: Unit.start)
        _ = resuming.joinRegistered(
            Self.lobby,
            correlationID: CorrelationID(jsonText: #""j2""#),
            wasMember: false,
            result: .joined(roomBecameLocal: true)
        )
        let read = resuming.roomBindCompleted(Self.lobby, correlationID: CorrelationID(jsonText: #""j2""#), result: .success(()))
        let sincePurpose = StreamCursor.Purpose.join(correlationID: CorrelationID(jsonText: #""j2""#), since: since)
        #expect(Self.reads(read) == [Read(address: room, after: 1, purpose: sincePurpose)])
        let replayed = Self.answer(&resuming, room, purpose: sincePurpose, .success(Self.range(top: 3, 2...3)))
        #expect(Unit.texts(replayed) == ["m2", "m3", #"{"type":"ack","id":"j2","recovered":true,"position":{"epoch":"e1","offset":3}}"#])

        var restricted = try Unit.machine(rooms: RoomRules(claim: ["other"]), configure: Self.withHistory)
        _ = restricted.started(wallClock: 0)
        _ = restricted.userBindCompleted(.success(()))
        _ = Self.answer(&restricted, Self.alice, purpose: .welcome, .success(Self.range(top: 0)))
        let forbidden = restricted.frameReceived(Unit.text(#"{"type":"join","room":"lobby","since":{"epoch":"e1","offset":1}}"#), now: Unit.start)
        #expect(Unit.errorCodes(forbidden) == ["forbidden"])
    }

    @Test("a direct to a user connected nowhere is kept: the sender's ack has the offset and recipient_offline")
    func offlineDirect() throws {
        var (machine, _) = try Self.open()
        let request = SessionStateMachine.PublishRequest(
            head: ByteBuffer(string: "{"),
            address: .user(try UserID(validating: "bob")),
            correlationID: CorrelationID(jsonText: #""c1""#),
            noRecipient: .recipientOffline
        )
        let acked = machine.publishCompleted(
            .success(.noRecipient),
            request: request,
            frame: ByteBuffer(),
            position: StreamPosition(epoch: "e", offset: 7)
        )
        #expect(Unit.texts(acked) == [#"{"type":"ack","id":"c1","offset":7,"recipient_offline":true}"#])
        let failed = machine.historyWriteFailed(HistoryError("down"), request: request)
        #expect(Unit.errorCodes(failed) == ["history_unavailable"])
    }

    @Test("a result for a read the cursor no longer waits for is dropped: a second join, a leave and a join again")
    func staleReads() throws {
        var (machine, _) = try Self.open()
        let room = BackplaneAddress.room(Self.lobby)
        _ = machine.frameReceived(Unit.text(#"{"type":"join","room":"lobby","since":{"epoch":"e1","offset":1}}"#), now: Unit.start)
        _ = machine.joinRegistered(Self.lobby, correlationID: nil, wasMember: false, result: .joined(roomBecameLocal: true))
        let first = machine.roomBindCompleted(Self.lobby, correlationID: nil, result: .success(()))
        let read = try #require(first.compactMap { if case .readHistory(let read) = $0 { read } else { nil } }.first)
        // A second join (no id, like the first) while the read is out: an ack, no second read.
        _ = machine.frameReceived(Unit.text(#"{"type":"join","room":"lobby"}"#), now: Unit.start)
        _ = machine.joinRegistered(Self.lobby, correlationID: nil, wasMember: true, result: .alreadyMember)
        let second = machine.roomBindCompleted(Self.lobby, correlationID: nil, result: .success(()))
        #expect(Self.reads(second).isEmpty)
        #expect(Unit.texts(second) == [#"{"type":"ack"}"#])
        let replayed = machine.historyRead(read, result: .success(Self.range(top: 3, 2...3)))
        #expect(Unit.texts(replayed) == ["m2", "m3", #"{"type":"ack","recovered":true,"position":{"epoch":"e1","offset":3}}"#])
        // The same result again (a duplicate answer): nothing.
        #expect(machine.historyRead(read, result: .success(Self.range(top: 3, 2...3))).isEmpty)

        // Leave while a join's read is out, then join again: the old result is not the new cursor's.
        _ = machine.frameReceived(Unit.text(#"{"type":"leave","room":"lobby","id":"l"}"#), now: Unit.start)
        _ = machine.frameReceived(Unit.text(#"{"type":"join","room":"lobby","id":"j3"}"#), now: Unit.start)
        _ = machine.joinRegistered(
            Self.lobby,
            correlationID: CorrelationID(jsonText: #""j3""#),
            wasMember: false,
            result: .joined(roomBecameLocal: false)
        )
        let again = machine.roomBindCompleted(Self.lobby, correlationID: CorrelationID(jsonText: #""j3""#), result: .success(()))
        let fresh = try #require(again.compactMap { if case .readHistory(let read) = $0 { read } else { nil } }.first)
        #expect(machine.historyRead(read, result: .success(Self.range(top: 9))).isEmpty, "a stale result")
        #expect(
            Unit.texts(machine.historyRead(fresh, result: .success(Self.range(top: 9)))) == [
                #"{"type":"ack","id":"j3","position":{"epoch":"e1","offset":9}}"#
            ]
        )
        _ = room
    }

    @Test("a gap fill that reaches its target keeps the connection when a newer reorder waits behind it")
    func newerReorderDuringFill() throws {
        var (machine, _) = try Self.open(top: 5)
        _ = Self.deliver(&machine, 7)
        let fill = machine.gapCheck(Self.alice)
        let read = try #require(fill.compactMap { if case .readHistory(let read) = $0 { read } else { nil } }.first)
        #expect(read.after == 5 && read.partialLimit == 1, "only the missing offset 6 is read")
        // 9 arrives before 8 while the read is out (two publishers).
        _ = Self.deliver(&machine, 9)
        let filled = machine.historyRead(read, result: .success(Self.range(top: 7, 6...6)))
        #expect(Unit.texts(filled) == ["m6", "m7"])
        #expect(Unit.sentClose(filled) == nil, "8 is still on its way: a new wait, not a close")
        #expect(Self.gapChecks(filled) == 1)
        #expect(Unit.texts(Self.deliver(&machine, 8)) == ["m8", "m9"])
    }
}

@Suite("Recovery decision and the memory history")
struct HistoryStoreUnitTests {
    @Test("all or nothing: same epoch, not ahead, within the limit, every message from since + 1 to the top")
    func decision() {
        let range = HistoryStateMachineTests.range(top: 10, 4...10)
        #expect(RecoveryDecision.decide(since: StreamPosition(epoch: "e1", offset: 3), range: range, limit: 10) == .recovered(range.entries))
        #expect(RecoveryDecision.decide(since: StreamPosition(epoch: "e1", offset: 10), range: range, limit: 10) == .recovered([]))
        #expect(RecoveryDecision.decide(since: StreamPosition(epoch: "e1", offset: 2), range: range, limit: 10) == .notRecovered(.expired))
        #expect(RecoveryDecision.decide(since: StreamPosition(epoch: "e1", offset: 3), range: range, limit: 6) == .notRecovered(.limitExceeded))
        #expect(RecoveryDecision.decide(since: StreamPosition(epoch: "e0", offset: 3), range: range, limit: 10) == .notRecovered(.epochChanged))
        #expect(RecoveryDecision.decide(since: StreamPosition(epoch: "e1", offset: 11), range: range, limit: 10) == .notRecovered(.ahead))
        let holed = HistoryRange(top: range.top, entries: range.entries.filter { $0.offset != 7 })
        #expect(RecoveryDecision.decide(since: StreamPosition(epoch: "e1", offset: 3), range: holed, limit: 10) == .notRecovered(.expired))
    }

    @Test("memory history: offsets from 1, a position of an empty stream stays valid, size and TTL bound it")
    func memoryHistory() async throws {
        let now = Mutex(NIODeadline.uptimeNanoseconds(1_000_000_000))
        let history = MemoryHistory(retention: HistoryRetention(size: 3, ttl: .seconds(10), metadataTTL: .seconds(100))) { now.withLock { $0 } }
        let bob = BackplaneAddress.user(try UserID(validating: "bob"))
        let empty = try await history.read(bob, after: nil, limit: 10)
        #expect(empty.top.offset == 0)
        var offsets: [UInt64] = []
        for index in 1...5 {
            let appended = try await history.append(ByteBuffer(string: #"{"n":\#(index)"#), to: bob)
            #expect(appended.position.epoch == empty.top.epoch, "the first message continues the position handed out")
            #expect(HistoryFrame.position(of: appended.frame) == appended.position)
            offsets.append(appended.position.offset)
        }
        #expect(offsets == [1, 2, 3, 4, 5])
        let kept = try await history.read(bob, after: 2, limit: 10)
        #expect(kept.entries.map { $0.offset } == [3, 4, 5])
        #expect(try await history.read(bob, after: 1, limit: 10).entries.map { $0.offset } == [3, 4, 5], "size: 2 was dropped")
        #expect(try await history.read(bob, after: 0, limit: 4).entries.isEmpty, "more than the limit missing: none")
        now.withLock { $0 = $0 + .seconds(11) }
        let expired = try await history.read(bob, after: 2, limit: 10)
        #expect(expired.entries.isEmpty)
        #expect(expired.top == StreamPosition(epoch: empty.top.epoch, offset: 5), "the metadata outlives the messages")

        // Its memory is the gateway's: a byte cap per stream drops the oldest first.
        let capped = MemoryHistory(retention: HistoryRetention(size: 1_000, maximumStreamBytes: 1_000))
        for _ in 1...10 { _ = try await capped.append(ByteBuffer(string: String(repeating: "x", count: 280)), to: bob) }
        let kept2 = try await capped.read(bob, after: 0, limit: 100, partial: true)
        #expect(kept2.entries.map { $0.offset } == [8, 9, 10], "3 frames of about 320 bytes fit in 1,000")
    }
}

extension HistoryStoreUnitTests {
    @Test("a history tail round-trips, and frames without one have no position")
    func historyTail() throws {
        let head = ServerFrame.roomHead(try RoomID(validating: "lobby"), from: try UserID(validating: "a"), data: ByteBuffer(string: #"{"x":1}"#))
        let frame = HistoryFrame.complete(head, with: StreamPosition(epoch: "0123abcd", offset: 42))
        #expect(String(buffer: frame) == #"{"type":"room","room":"lobby","from":"a","data":{"x":1},"offset":42,"epoch":"0123abcd"}"#)
        #expect(try JSONSerialization.jsonObject(with: Data(String(buffer: frame).utf8)) is [String: Any])
        #expect(HistoryFrame.position(of: frame) == StreamPosition(epoch: "0123abcd", offset: 42))
        #expect(HistoryFrame.position(of: HistoryFrame.complete(head)) == nil)
        #expect(HistoryFrame.position(of: ByteBuffer(string: #"{"data":"x","offset":,"epoch":"e"}"#)) == nil)
        #expect(HistoryFrame.position(of: ByteBuffer(string: #"{"data":"x","offset":99999999999999999999,"epoch":"e"}"#)) == nil)
        #expect(HistoryFrame.position(of: ByteBuffer(string: #"{"data":"x","offset":1,"epoch":"e!"}"#)) == nil)
    }
}
