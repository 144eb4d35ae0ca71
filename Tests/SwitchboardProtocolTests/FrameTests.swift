import Foundation
import NIOCore
import SwitchboardProtocol
import Testing

@Suite("Client and server frames")
struct FrameTests {
    private func decode(_ text: String) -> Result<ClientFrame, ProtocolError> {
        ClientFrame.decode(ByteBuffer(string: text))
    }

    private func error(_ text: String) -> ProtocolError? {
        if case .failure(let error) = decode(text) { return error }
        return nil
    }

    @Test("every client frame type decodes")
    func decodesAll() throws {
        guard case .success(.direct(let to, let data, let id)) = decode(#"{"type":"direct","to":"bob","data":{"x": 1.50},"id":"c1"}"#) else {
            Issue.record("direct did not decode")
            return
        }
        #expect(to.rawValue == "bob")
        #expect(String(buffer: data) == #"{"x": 1.50}"#)
        #expect(id?.jsonText == #""c1""#)
        #expect(try decode(#"{"type":"join","room":"lobby"}"#).get() == .join(room: try RoomID(validating: "lobby"), correlationID: nil))
        #expect(
            try decode(#"{"type":"leave","room":"lobby","id":7}"#).get()
                == .leave(room: try RoomID(validating: "lobby"), correlationID: CorrelationID(jsonText: "7"))
        )
        #expect(try decode(#"{"type":"ping","extra":[1]}"#).get() == .ping(correlationID: nil))
        let lobby = try RoomID(validating: "lobby")
        #expect(try decode(#"{"type":"join","room":"lobby","presence":true}"#).get() == .join(room: lobby, presence: true, correlationID: nil))
        #expect(try decode(#"{"type":"join","room":"lobby","presence":false}"#).get() == .join(room: lobby, correlationID: nil))
        #expect(
            try decode(#"{"type":"presence","room":"lobby","id":"p1"}"#).get()
                == .presence(room: lobby, correlationID: CorrelationID(jsonText: #""p1""#))
        )
        guard case .failure(let notBool) = decode(#"{"type":"join","room":"lobby","presence":1,"id":2}"#) else {
            Issue.record("presence: 1 decoded")
            return
        }
        #expect(notBool.code == .invalidMessage && notBool.correlationID?.jsonText == "2")
        guard case .failure(let noRoom) = decode(#"{"type":"presence"}"#) else {
            Issue.record("presence without room decoded")
            return
        }
        #expect(noRoom.code == .invalidMessage)
        guard case .success(.publish(let room, let payload, _)) = decode(#"{"type":"publish","room":"r","data":null}"#) else {
            Issue.record("publish did not decode")
            return
        }
        #expect(room.rawValue == "r")
        #expect(String(buffer: payload) == "null")
    }

    @Test("each malformed frame gets its documented code, with the id echoed when usable")
    func errors() {
        #expect(error("not json")?.code == .invalidMessage)
        #expect(error("[1,2]")?.code == .invalidMessage)
        #expect(error(#"{"id":"c9"}"#) == ProtocolError(.invalidMessage, #"missing field "type""#, correlationID: CorrelationID("c9")))
        #expect(error(#"{"type":5}"#)?.code == .invalidMessage)
        #expect(error(#"{"type":"shout","id":"c2"}"#)?.code == .unknownType)
        #expect(error(#"{"type":"shout","id":"c2"}"#)?.correlationID == CorrelationID("c2"))
        #expect(error(#"{"type":"direct","data":1}"#)?.code == .invalidMessage)
        #expect(error(#"{"type":"direct","to":42,"data":1}"#)?.code == .invalidMessage)
        #expect(error(#"{"type":"direct","to":"bob"}"#)?.code == .invalidMessage)
        #expect(error(#"{"type":"join"}"#)?.code == .invalidMessage)
        #expect(error(#"{"type":"join","room":""}"#)?.code == .invalidID)
        #expect(error(#"{"type":"join","room":"a\u0000b"}"#)?.code == .invalidID)
        #expect(error(#"{"type":"direct","to":"\u001f","data":1}"#)?.code == .invalidID)
        #expect(error(#"{"type":"join","room":""# + String(repeating: "r", count: 129) + #""}"#)?.code == .invalidID)
        #expect(error(#"{"type":"ping","id":{"a":1}}"#)?.code == .invalidMessage)
        #expect(error(#"{"type":"ping","id":""# + String(repeating: "i", count: 200) + #""}"#)?.code == .invalidMessage)
        #expect(error(#"{"type":"ping","type":"ping"}"#)?.code == .invalidMessage)
    }

    @Test("server frames are the exact JSON of docs/protocol.md, data copied verbatim")
    func serverFrames() throws {
        let alice = try UserID(validating: "alice")
        let bob = try UserID(validating: "bob")
        #expect(String(buffer: ServerFrame.welcome(user: alice, gateway: "gw-1")) == #"{"type":"welcome","user":"alice","gateway":"gw-1"}"#)
        #expect(
            String(buffer: ServerFrame.direct(from: alice, to: bob, data: ByteBuffer(string: #"{"n": 1.50}"#)))
                == #"{"type":"direct","from":"alice","to":"bob","data":{"n": 1.50}}"#
        )
        #expect(
            String(buffer: ServerFrame.room(try RoomID(validating: "lobby"), from: alice, data: ByteBuffer(string: "[1]")))
                == #"{"type":"room","room":"lobby","from":"alice","data":[1]}"#
        )
        #expect(String(buffer: ServerFrame.ack(correlationID: CorrelationID("c1"))) == #"{"type":"ack","id":"c1"}"#)
        #expect(String(buffer: ServerFrame.ack(correlationID: nil)) == #"{"type":"ack"}"#)
        #expect(String(buffer: ServerFrame.pong(correlationID: CorrelationID(jsonText: "5"))) == #"{"type":"pong","id":5}"#)
        #expect(
            String(buffer: ServerFrame.error(ProtocolError(.notMember, "join first", correlationID: CorrelationID("c3"))))
                == #"{"type":"error","id":"c3","code":"not_member","message":"join first"}"#
        )
        let lobby = try RoomID(validating: "lobby")
        let presence = ServerFrame.presence(room: lobby, correlationID: CorrelationID("p1"), users: [(alice, 2), (bob, 1)], count: 3)
        #expect(
            String(buffer: presence)
                == #"{"type":"presence","room":"lobby","id":"p1","users":[{"user":"alice","connections":2},{"user":"bob","connections":1}],"count":3,"truncated":true}"#
        )
        let joined = ServerFrame.joined(room: lobby, user: alice)
        #expect(String(buffer: joined) == #"{"type":"joined","room":"lobby","user":"alice"}"#)
        #expect(String(buffer: ServerFrame.left(room: lobby, user: bob)) == #"{"type":"left","room":"lobby","user":"bob"}"#)
        #expect(ServerFrame.isPresenceEvent(joined) && ServerFrame.isPresenceEvent(ServerFrame.left(room: lobby, user: bob)))
        #expect(!ServerFrame.isPresenceEvent(ServerFrame.room(lobby, from: alice, data: ByteBuffer(string: #"{"type":"joined"}"#))))
        #expect(ServerFrame.isPresenceEvent(joined, about: alice) && !ServerFrame.isPresenceEvent(joined, about: bob))
        let ali = try UserID(validating: "ali")
        #expect(!ServerFrame.isPresenceEvent(ServerFrame.joined(room: lobby, user: ali), about: alice))
    }

    @Test("ids with quotes, backslashes and control-like text are escaped into valid JSON")
    func escaping() throws {
        let odd = try UserID(validating: #"a"b\c/é"#)
        let frame = String(buffer: ServerFrame.welcome(user: odd, gateway: "g"))
        let object = try JSONSerialization.jsonObject(with: Data(frame.utf8)) as? [String: String]
        #expect(object?["user"] == #"a"b\c/é"#)
        var text = ""
        JSONText.appendQuoted("line\nbreak\u{1}", to: &text)
        #expect(text == #""line\nbreak\u0001""#)
    }

    @Test("error codes are the wire names of docs/protocol.md")
    func errorCodes() {
        #expect(
            ErrorCode.allCases.map(\.rawValue).sorted() == [
                "already_resumed", "backplane_unavailable", "forbidden", "history_disabled", "history_unavailable", "internal", "invalid_id",
                "invalid_message", "not_member", "presence_disabled", "presence_unavailable", "rate_limited", "recipient_offline", "too_large",
                "unknown_type",
            ]
        )
    }

    @Test("resume and join with since decode; the position is checked")
    func since() throws {
        let lobby = try RoomID(validating: "lobby")
        #expect(
            try decode(#"{"type":"resume","since":{"epoch":"ab-9_Z","offset":12},"id":"r1"}"#).get()
                == .resume(since: StreamPosition(epoch: "ab-9_Z", offset: 12), correlationID: CorrelationID(jsonText: #""r1""#))
        )
        #expect(
            try decode(#"{"type":"join","room":"lobby","since":{"offset":0,"epoch":"e"}}"#).get()
                == .join(room: lobby, since: StreamPosition(epoch: "e", offset: 0), correlationID: nil)
        )
        #expect((try? decode(#"{"type":"join","room":"lobby","since":{"epoch":"e","offset":9007199254740991}}"#).get()) != nil)
    }

    @Test(
        "a bad since is invalid_message, with the client's id",
        arguments: [
            #"{"type":"resume","id":"r"}"#,
            #"{"type":"resume","since":"e:1","id":"r"}"#,
            #"{"type":"resume","since":[1],"id":"r"}"#,
            #"{"type":"resume","since":{"epoch":"e"},"id":"r"}"#,
            #"{"type":"resume","since":{"offset":1},"id":"r"}"#,
            #"{"type":"resume","since":{"epoch":"e","offset":-1},"id":"r"}"#,
            #"{"type":"resume","since":{"epoch":"e","offset":1.5},"id":"r"}"#,
            #"{"type":"resume","since":{"epoch":"e","offset":1e3},"id":"r"}"#,
            #"{"type":"resume","since":{"epoch":"e","offset":9007199254740992},"id":"r"}"#,
            #"{"type":"resume","since":{"epoch":"e","offset":99999999999999999999999},"id":"r"}"#,
            #"{"type":"resume","since":{"epoch":"e","offset":"1"},"id":"r"}"#,
            #"{"type":"resume","since":{"epoch":"","offset":1},"id":"r"}"#,
            #"{"type":"resume","since":{"epoch":"a\"b","offset":1},"id":"r"}"#,
            #"{"type":"resume","since":{"epoch":1,"offset":1},"id":"r"}"#,
            #"{"type":"join","room":"lobby","since":null,"id":"r"}"#,
        ]
    )
    func badSince(_ text: String) {
        guard case .failure(let error) = decode(text) else {
            Issue.record("accepted: \(text)")
            return
        }
        #expect(error.code == .invalidMessage)
        #expect(error.correlationID?.jsonText == #""r""#)
    }
}
