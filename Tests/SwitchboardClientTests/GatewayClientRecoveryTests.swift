import Testing

@testable import SwitchboardClient

/// Stream recovery (docs/clients.md, "Stream recovery") in `GatewayClient.StateMachine`, driven as
/// in `GatewayClientStateMachineTests`: positions, duplicates, `resume` and `join` with
/// `since` after a reconnect, frames held until the answer, and what the application is told.
@Suite("GatewayClient's state machine: stream recovery")
struct GatewayClientRecoveryTests {
    @Test("a message handed over before a reconnect is not handed over again when the replay or the live path repeats it")
    func dedupeAcrossReconnect() {
        var script = Script()
        // The first connection resumes nothing: it starts at the welcome's top.
        #expect(script.bringUp(position: at(5)) == ["waiters [1] welcome alice@gw1", "welcome alice@gw1", "position user E:5"])
        #expect(script.frame(direct(6), at: 10) == ["direct bob->alice 6", "position user E:6"])
        #expect(script.frame(direct(7), at: 20) == ["direct bob->alice 7", "position user E:7"])
        #expect(script.frame(direct(6), at: 30) == [])

        script.reconnect(position: at(8))
        // The replay overlaps what was handed over (7), then brings 8.
        #expect(script.frame(direct(7), generation: 2, at: 180) == [])
        #expect(script.frame(direct(8), generation: 2, at: 181) == [])
        #expect(
            script.frame(.reply(id: "c1", Acknowledgement(position: at(8), recovered: true)), generation: 2, at: 190) == [
                "direct bob->alice 8", "position user E:8", "recovered user true",
            ]
        )
        // The same message again on the live path, then the next one.
        #expect(script.frame(direct(8), generation: 2, at: 200) == [])
        #expect(script.frame(direct(9), generation: 2, at: 210) == ["direct bob->alice 9", "position user E:9"])
        #expect(script.machine.positions[.user] == at(9))
    }

    @Test("after a reconnect's welcome the client writes resume with the position it holds, first, and only then")
    func resumeAfterReconnect() {
        var script = Script()
        script.bringUp(position: at(5))
        #expect(script.frame(direct(6), at: 10) == ["direct bob->alice 6", "position user E:6"])
        _ = script.closed(code: 1012, at: 100)
        _ = script.fire(150)
        _ = script.opened("conn2", generation: 2, at: 160)
        // The new welcome's top (9) is not taken: messages 7…9 are what the resume is for.
        #expect(
            script.frame(.welcome(user: "alice", gateway: "gw2", position: at(9)), generation: 2, at: 170) == [
                #"write conn2 {"type":"resume","since":{"epoch":"E","offset":6},"id":"c1"}"#, "arm 1170ms", "welcome alice@gw2",
                "rejoined [] failed []",
            ]
        )
        #expect(script.machine.positions[.user] == at(6))
        // A request made after welcome follows the resume.
        #expect(script.request(.ping, reply: 2, at: 175) == [#"write conn2 {"type":"ping","id":"c2"}"#])
    }

    @Test("a remembered room is re-joined with since = its position, and its replay is handed over when the join is acked")
    func joinWithSinceOnRejoin() {
        var script = Script()
        script.bringUp(position: at(0))
        _ = script.request(.join(room: "lobby"), reply: 1, at: 10)
        #expect(
            script.frame(.reply(id: "c1", Acknowledgement(position: at(3, "R"))), at: 20) == ["position room lobby R:3", "reply 1 ok"]
        )
        #expect(script.frame(room(4), at: 30) == ["room lobby bob 4", "position room lobby R:4"])

        _ = script.closed(code: 1001, at: 100)
        _ = script.fire(150)
        _ = script.opened("conn2", generation: 2, at: 160)
        #expect(
            script.frame(.welcome(user: "alice", gateway: "gw2", position: at(0)), generation: 2, at: 170) == [
                #"write conn2 {"type":"resume","since":{"epoch":"E","offset":0},"id":"c2"}"#, "arm 1170ms",
                #"write conn2 {"type":"join","room":"lobby","since":{"epoch":"R","offset":4},"id":"c3"}"#, "welcome alice@gw2",
            ]
        )
        // A live 6 comes before the replayed 5: both wait for the ack.
        #expect(script.frame(room(6), generation: 2, at: 180) == [])
        #expect(script.frame(room(5), generation: 2, at: 181) == [])
        #expect(
            script.frame(.reply(id: "c3", Acknowledgement(position: at(6, "R"), recovered: true)), generation: 2, at: 190) == [
                "room lobby bob 5", "position room lobby R:5", "room lobby bob 6", "position room lobby R:6", "recovered room lobby true",
                "rejoined [lobby] failed []",
            ]
        )
        #expect(script.frame(.reply(id: "c2", Acknowledgement(position: at(0), recovered: true)), generation: 2, at: 191) == ["recovered user true"])
    }

    @Test("a join of the room made while its join with since is unanswered does not end the recovery")
    func joinDuringRecovery() {
        var script = Script()
        script.bringUp(position: at(0))
        _ = script.request(.join(room: "lobby"), reply: 1, at: 10)
        _ = script.frame(.reply(id: "c1", Acknowledgement(position: at(4, "R"))), at: 20)
        script.reconnect(position: at(0), rooms: 1)
        #expect(script.request(.join(room: "lobby"), reply: 2, at: 175) == [#"write conn2 {"type":"join","room":"lobby","id":"c4"}"#])
        #expect(script.frame(room(5), generation: 2, at: 180) == [])
        #expect(script.frame(.reply(id: "c4", Acknowledgement(position: at(5, "R"))), generation: 2, at: 185) == ["reply 2 ok"])
        #expect(
            script.frame(.reply(id: "c3", Acknowledgement(position: at(5, "R"), recovered: true)), generation: 2, at: 190) == [
                "room lobby bob 5", "position room lobby R:5", "recovered room lobby true", "rejoined [lobby] failed []",
            ]
        )
    }

    @Test("a live 12 written before the replayed 6…11 reaches the application as 6…12, once each")
    func heldFramesMergedInOrder() {
        var script = Script()
        script.bringUp(position: at(5))
        script.reconnect(position: at(12))
        #expect(script.frame(direct(12), generation: 2, at: 175) == [])
        for offset in 6...12 {
            #expect(script.frame(direct(offset), generation: 2, at: 180 + offset) == [])
        }
        let merged = (6...12).flatMap { ["direct bob->alice \($0)", "position user E:\($0)"] }
        #expect(
            script.frame(.reply(id: "c1", Acknowledgement(position: at(12), recovered: true)), generation: 2, at: 200)
                == merged + ["recovered user true"]
        )
        #expect(script.frame(direct(12), generation: 2, at: 210) == [])
    }

    @Test("recovered: the position becomes the later of the last message handed over and the ack's top")
    func recoveredTakesTheLater() {
        // A live 13 already past the ack's top (12): 13 stays, and a second 13 is a duplicate.
        var ahead = Script()
        ahead.bringUp(position: at(10))
        ahead.reconnect(position: at(12))
        #expect(ahead.frame(direct(13), generation: 2, at: 180) == [])
        #expect(ahead.frame(direct(11), generation: 2, at: 181) == [])
        #expect(ahead.frame(direct(12), generation: 2, at: 182) == [])
        #expect(
            ahead.frame(.reply(id: "c1", Acknowledgement(position: at(12), recovered: true)), generation: 2, at: 190) == [
                "direct bob->alice 11", "position user E:11", "direct bob->alice 12", "position user E:12", "direct bob->alice 13",
                "position user E:13", "recovered user true",
            ]
        )
        #expect(ahead.frame(direct(13), generation: 2, at: 200) == [])

        // A top past everything replayed: the position moves up to it.
        var behind = Script()
        behind.bringUp(position: at(10))
        behind.reconnect(position: at(12))
        #expect(
            behind.frame(.reply(id: "c1", Acknowledgement(position: at(12), recovered: true)), generation: 2, at: 190) == [
                "position user E:12", "recovered user true",
            ]
        )
        #expect(behind.frame(direct(12), generation: 2, at: 200) == [])
    }

    @Test("recovered:false is reported with its reason, and the position is reset to the ack's top")
    func notRecovered() {
        var script = Script()
        script.bringUp(position: at(7))
        script.reconnect(position: at(40, "F"))
        #expect(script.frame(direct(41, "F"), generation: 2, at: 180) == [])
        #expect(
            script.frame(.reply(id: "c1", Acknowledgement(position: at(40, "F"), recovered: false, reason: "epoch_changed")), generation: 2, at: 190)
                == ["position user F:40", "direct bob->alice 41", "position user F:41", "recovered user false epoch_changed"]
        )
        #expect(script.frame(direct(40, "F"), generation: 2, at: 200) == [])
        #expect(script.frame(direct(42, "F"), generation: 2, at: 210) == ["direct bob->alice 42", "position user F:42"])

        // A room, same epoch, too far behind: what is up to the top is the application's to
        // reload (a held 20 is dropped); what follows it is handed over.
        var rooms = Script()
        rooms.bringUp(position: at(0))
        _ = rooms.request(.join(room: "lobby"), reply: 1, at: 10)
        _ = rooms.frame(.reply(id: "c1", Acknowledgement(position: at(4, "R"))), at: 20)
        rooms.reconnect(position: at(0), rooms: 1)
        #expect(rooms.frame(room(20), generation: 2, at: 180) == [])
        #expect(rooms.frame(room(31), generation: 2, at: 181) == [])
        #expect(
            rooms.frame(.reply(id: "c3", Acknowledgement(position: at(30, "R"), recovered: false, reason: "expired")), generation: 2, at: 190) == [
                "position room lobby R:30", "room lobby bob 31", "position room lobby R:31", "recovered room lobby false expired",
                "rejoined [lobby] failed []",
            ]
        )
    }

    @Test("a frame of another epoch is no duplicate: it is handed over and its epoch adopted")
    func epochChange() {
        var script = Script()
        script.bringUp(position: at(7))
        #expect(script.frame(direct(1, "F"), at: 10) == ["direct bob->alice 1", "position user F:1"])
        #expect(script.frame(direct(1, "F"), at: 20) == [])
        #expect(script.frame(direct(2, "F"), at: 30) == ["direct bob->alice 2", "position user F:2"])
        #expect(script.machine.positions[.user] == at(2, "F"))
    }

    @Test("with history off nothing changes: no positions, no duplicate check, no resume, no since, recipient_offline stays an error")
    func historyOff() {
        var script = Script()
        #expect(script.bringUp() == ["waiters [1] welcome alice@gw1", "welcome alice@gw1"])
        #expect(script.frame(.direct(from: "bob", to: "alice", data: "1"), at: 10) == ["direct bob->alice 1"])
        #expect(script.frame(.direct(from: "bob", to: "alice", data: "1"), at: 11) == ["direct bob->alice 1"])
        _ = script.request(.join(room: "lobby"), reply: 1, at: 20)
        #expect(script.frame(.reply(id: "c1"), at: 30) == ["reply 1 ok"])
        #expect(script.frame(.room(room: "lobby", from: "bob", data: "2"), at: 40) == ["room lobby bob 2"])
        _ = script.request(.direct(to: "carol", data: "3"), reply: 2, at: 50)
        #expect(script.frame(.error(id: "c2", code: "recipient_offline", message: "no"), at: 60) == ["reply 2 recipient_offline"])

        _ = script.closed(code: 1006, at: 100)
        _ = script.fire(150)
        _ = script.opened("conn2", generation: 2, at: 160)
        #expect(
            script.frame(.welcome(user: "alice", gateway: "gw1"), generation: 2, at: 170) == [
                #"write conn2 {"type":"join","room":"lobby","id":"c3"}"#, "arm 1170ms", "welcome alice@gw1",
            ]
        )
        #expect(script.frame(.room(room: "lobby", from: "bob", data: "4"), generation: 2, at: 180) == ["room lobby bob 4"])
        #expect(script.frame(.reply(id: "c3"), generation: 2, at: 190) == ["rejoined [lobby] failed []"])
        #expect(script.machine.positions.isEmpty)
    }

    @Test("with history on, a direct to a user connected nowhere is acked with its offset and recipient_offline")
    func directToOfflineRecipient() throws {
        var script = Script()
        script.bringUp(position: at(0))
        _ = script.request(.direct(to: "carol", data: "1"), reply: 1, at: 10)
        let ack = try #require(IncomingFrame(text: #"{"type":"ack","id":"c1","offset":7,"recipient_offline":true}"#))
        #expect(script.frame(ack, at: 20) == ["reply 1 ok offset 7 recipient offline"])
    }

    @Test("a resume refused with an error is reported once and not retried on that connection; held frames are handed over")
    func resumeRefused() {
        // history_unavailable: the position stays, so the next connection tries again.
        var script = Script()
        script.bringUp(position: at(5))
        script.reconnect(position: at(9))
        #expect(script.frame(direct(7), generation: 2, at: 180) == [])
        #expect(script.frame(direct(6), generation: 2, at: 181) == [])
        #expect(
            script.frame(.error(id: "c1", code: "history_unavailable", message: "store down"), generation: 2, at: 190) == [
                "direct bob->alice 6", "position user E:6", "direct bob->alice 7", "position user E:7", "recovered user false history_unavailable",
            ]
        )
        #expect(script.machine.state == .ready)
        #expect(script.machine.pendingCount == 0)
        _ = script.closed(code: 1006, generation: 2, at: 300)
        _ = script.fire(350)
        _ = script.opened("conn3", generation: 3, at: 360)
        #expect(
            script.frame(.welcome(user: "alice", gateway: "gw1", position: at(9)), generation: 3, at: 370).first
                == #"write conn3 {"type":"resume","since":{"epoch":"E","offset":7},"id":"c2"}"#
        )

        // history_disabled: the position is dropped, so no later connection asks again.
        var disabled = Script()
        disabled.bringUp(position: at(5))
        disabled.reconnect(position: at(9))
        #expect(
            disabled.frame(.error(id: "c1", code: "history_disabled", message: "off"), generation: 2, at: 190) == [
                "recovered user false history_disabled"
            ]
        )
        #expect(disabled.machine.positions[.user] == nil)
        _ = disabled.closed(code: 1006, generation: 2, at: 300)
        _ = disabled.fire(350)
        _ = disabled.opened("conn3", generation: 3, at: 360)
        #expect(
            disabled.frame(.welcome(user: "alice", gateway: "gw1", position: at(9)), generation: 3, at: 370) == [
                "welcome alice@gw1", "position user E:9", "rejoined [] failed []",
            ]
        )

        // already_resumed, and a resume never answered, end the same way.
        var twice = Script()
        twice.bringUp(position: at(5))
        twice.reconnect(position: at(9))
        #expect(
            twice.frame(.error(id: "c1", code: "already_resumed", message: "once"), generation: 2, at: 190) == [
                "recovered user false already_resumed"
            ]
        )
        var silent = Script()
        silent.bringUp(position: at(5))
        silent.reconnect(position: at(9))
        #expect(silent.frame(direct(6), generation: 2, at: 180) == [])
        #expect(silent.fire(1170) == ["direct bob->alice 6", "position user E:6", "recovered user false timeout"])
        #expect(silent.frame(.reply(id: "c1", Acknowledgement(position: at(9), recovered: true)), generation: 2, at: 1200) == [])
    }

    @Test("a join with since refused for since's sake is sent again without it, so the room is still joined, and reported as not recovered")
    func joinWithSinceRefused() {
        var script = Script()
        script.bringUp(position: at(0))
        _ = script.request(.join(room: "lobby"), reply: 1, at: 10)
        _ = script.frame(.reply(id: "c1", Acknowledgement(position: at(4, "R"))), at: 20)
        script.reconnect(position: at(0), rooms: 1)
        #expect(
            script.frame(.error(id: "c3", code: "history_unavailable", message: "store down"), generation: 2, at: 180) == [
                #"write conn2 {"type":"join","room":"lobby","id":"c4"}"#
            ]
        )
        #expect(script.frame(room(9), generation: 2, at: 185) == [])
        #expect(
            script.frame(.reply(id: "c4", Acknowledgement(position: at(8, "R"))), generation: 2, at: 190) == [
                "position room lobby R:8", "room lobby bob 9", "position room lobby R:9", "recovered room lobby false history_unavailable",
                "rejoined [lobby] failed []",
            ]
        )
        #expect(script.machine.rooms == ["lobby"])

        // Refused for the room's sake: a re-join failure as before, and the position is forgotten with the room.
        var forbidden = Script()
        forbidden.bringUp(position: at(0))
        _ = forbidden.request(.join(room: "lobby"), reply: 1, at: 10)
        _ = forbidden.frame(.reply(id: "c1", Acknowledgement(position: at(4, "R"))), at: 20)
        forbidden.reconnect(position: at(0), rooms: 1)
        #expect(
            forbidden.frame(.error(id: "c3", code: "forbidden", message: "no"), generation: 2, at: 180) == [
                "error forbidden room lobby", "rejoined [] failed [lobby: forbidden]",
            ]
        )
        #expect(forbidden.machine.positions[.room("lobby")] == nil)
    }

    @Test("a close while recovering drops the held frames; the next connection resumes from the same position")
    func closeWhileRecovering() {
        var script = Script()
        script.bringUp(position: at(5))
        script.reconnect(position: at(9))
        #expect(script.frame(direct(6), generation: 2, at: 180) == [])
        #expect(script.closed(code: 1006, generation: 2, at: 190) == ["disconnected 1006 reconnect", "reconnecting 1 after 50ms", "arm 240ms"])
        _ = script.fire(240)
        _ = script.opened("conn3", generation: 3, at: 250)
        #expect(
            script.frame(.welcome(user: "alice", gateway: "gw1", position: at(9)), generation: 3, at: 260).first
                == #"write conn3 {"type":"resume","since":{"epoch":"E","offset":5},"id":"c2"}"#
        )
    }

    @Test("a left room is forgotten: a frame still on its way moves no position, and a new join has no since")
    func leaveForgetsPosition() {
        var script = Script()
        script.bringUp(position: at(0))
        _ = script.request(.join(room: "lobby"), reply: 1, at: 10)
        _ = script.frame(.reply(id: "c1", Acknowledgement(position: at(4, "R"))), at: 20)
        _ = script.request(.leave(room: "lobby"), reply: 2, at: 30)
        #expect(script.frame(room(5), at: 40) == ["room lobby bob 5"])
        #expect(script.machine.positions[.room("lobby")] == nil)
        #expect(script.request(.join(room: "lobby"), reply: 3, at: 50).first == #"write conn1 {"type":"join","room":"lobby","id":"c3"}"#)
    }

    @Test("resumeFrom: the first welcome resumes the user stream and a join resumes its room; a gateway without history says so")
    func resumeFromSavedPositions() {
        let saved: [GatewayClient.MessageStream: GatewayClient.StreamPosition] = [.user: at(3), .room("lobby"): at(2, "R")]
        var script = Script(resumeFrom: saved)
        #expect(
            script.bringUp(position: at(10)) == [
                #"write conn1 {"type":"resume","since":{"epoch":"E","offset":3},"id":"c1"}"#, "arm 1000ms", "waiters [1] welcome alice@gw1",
                "welcome alice@gw1",
            ]
        )
        #expect(
            script.request(.join(room: "lobby"), reply: 1, at: 10) == [
                #"write conn1 {"type":"join","room":"lobby","since":{"epoch":"R","offset":2},"id":"c2"}"#
            ]
        )
        #expect(script.frame(room(3), at: 20) == [])
        #expect(
            script.frame(.reply(id: "c2", Acknowledgement(position: at(3, "R"), recovered: true)), at: 30) == [
                "room lobby bob 3", "position room lobby R:3", "recovered room lobby true", "reply 1 ok",
            ]
        )
        #expect(script.machine.rooms == ["lobby"])

        var off = Script(resumeFrom: saved)
        #expect(
            off.bringUp() == [
                "waiters [1] welcome alice@gw1", "welcome alice@gw1", "recovered user false history_disabled",
                "recovered room lobby false history_disabled",
            ]
        )
        #expect(off.request(.join(room: "lobby"), reply: 1, at: 10).first == #"write conn1 {"type":"join","room":"lobby","id":"c1"}"#)
    }
}

@Suite("Reading the history members of server frames")
struct RecoveryFrameTests {
    @Test("welcome, direct, room and ack carry their positions")
    func wellFormed() {
        #expect(
            IncomingFrame(text: #"{"type":"welcome","user":"bob","gateway":"g1","position":{"epoch":"E","offset":4}}"#)
                == .welcome(user: "bob", gateway: "g1", position: at(4))
        )
        #expect(
            IncomingFrame(text: #"{"type":"direct","from":"alice","to":"bob","data":{"a":1},"offset":7,"epoch":"E"}"#)
                == .direct(from: "alice", to: "bob", data: #"{"a":1}"#, position: at(7))
        )
        #expect(
            IncomingFrame(text: #"{"type":"room","room":"lobby","from":"alice","data":[1],"offset":3,"epoch":"R"}"#)
                == .room(room: "lobby", from: "alice", data: "[1]", position: at(3, "R"))
        )
        #expect(
            IncomingFrame(text: #"{"type":"ack","id":"r1","recovered":false,"reason":"expired","position":{"epoch":"E","offset":12}}"#)
                == .reply(id: "r1", Acknowledgement(position: at(12), recovered: false, reason: "expired"))
        )
        #expect(
            IncomingFrame(text: #"{"type":"ack","id":"c1","offset":7,"recipient_offline":true}"#)
                == .reply(id: "c1", Acknowledgement(offset: 7, recipientOffline: true))
        )
    }

    @Test(
        "a missing or malformed history member reads as absent, and the frame is still read",
        arguments: [
            #""offset":"7","epoch":"E""#, #""offset":-1,"epoch":"E""#, #""offset":1.5,"epoch":"E""#, #""offset":1e3,"epoch":"E""#,
            #""offset":99999999999999999999,"epoch":"E""#, #""offset":7"#, #""epoch":"E""#, #""offset":7,"epoch":7"#,
            #""offset":null,"epoch":null"#,
        ]
    )
    func malformedMessagePosition(_ members: String) {
        #expect(
            IncomingFrame(text: #"{"type":"direct","from":"a","to":"b","data":1,"# + members + "}") == .direct(from: "a", to: "b", data: "1")
        )
    }

    @Test(
        "a malformed position or flag in welcome or ack reads as absent",
        arguments: [
            #""position":{"epoch":"E"}"#, #""position":{"offset":1}"#, #""position":{"epoch":1,"offset":1}"#, #""position":[1]"#,
            #""position":"E:1""#, #""position":{"epoch":"E","offset":"1"}"#, #""position":null"#,
        ]
    )
    func malformedPosition(_ member: String) {
        #expect(IncomingFrame(text: #"{"type":"welcome","user":"u","gateway":"g","# + member + "}") == .welcome(user: "u", gateway: "g"))
        #expect(IncomingFrame(text: #"{"type":"ack","id":"c1","# + member + "}") == .reply(id: "c1"))
    }

    @Test("ack flags and numbers of the wrong type read as absent")
    func malformedAck() {
        #expect(
            IncomingFrame(text: #"{"type":"ack","id":"c1","recovered":"yes","recipient_offline":1,"reason":5,"offset":"7"}"#) == .reply(id: "c1")
        )
        #expect(IncomingFrame(text: #"{"type":"pong","id":"c2","recovered":true}"#) == .reply(id: "c2", Acknowledgement(recovered: true)))
    }

    @Test("resume and join with since are written as the wire contract spells them")
    func outgoing() {
        #expect(OutgoingFrame.resume(since: at(7, #"e"1"#), id: "r1") == #"{"type":"resume","since":{"epoch":"e\"1","offset":7},"id":"r1"}"#)
        #expect(
            OutgoingFrame.join(room: "lobby", since: at(3), id: "j1") == #"{"type":"join","room":"lobby","since":{"epoch":"E","offset":3},"id":"j1"}"#
        )
        #expect(OutgoingFrame.join(room: "lobby", id: "j2") == #"{"type":"join","room":"lobby","id":"j2"}"#)
    }
}

// MARK: Helpers

/// Position `offset` in epoch `epoch`.
private func at(_ offset: Int, _ epoch: String = "E") -> GatewayClient.StreamPosition {
    GatewayClient.StreamPosition(epoch: epoch, offset: offset)
}

/// A direct frame from bob whose data is its offset.
private func direct(_ offset: Int, _ epoch: String = "E") -> IncomingFrame {
    .direct(from: "bob", to: "alice", data: "\(offset)", position: at(offset, epoch))
}

/// A `lobby` frame from bob whose data is its offset.
private func room(_ offset: Int, _ epoch: String = "R") -> IncomingFrame {
    .room(room: "lobby", from: "bob", data: "\(offset)", position: at(offset, epoch))
}

extension Script {
    /// Closes connection 1 (1006 at 100 ms), reconnects as connection 2 and reads its
    /// `welcome` at 170 ms; checks that a `resume` is written first, and `rooms` joins after it.
    fileprivate mutating func reconnect(position: GatewayClient.StreamPosition, rooms: Int = 0) {
        _ = closed(code: 1006, at: 100)
        _ = fire(150)
        _ = opened("conn2", generation: 2, at: 160)
        let actions = frame(.welcome(user: "alice", gateway: "gw2", position: position), generation: 2, at: 170)
        let writes = actions.filter { $0.hasPrefix("write conn2 ") }
        #expect(writes.count == 1 + rooms)
        #expect(writes.first?.contains(#"{"type":"resume""#) == true)
    }
}
