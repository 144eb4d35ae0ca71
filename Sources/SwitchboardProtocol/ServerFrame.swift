public import NIOCore

/// Encodes the frames the gateway sends (wire protocol v1, docs/protocol.md).
///
/// Each frame is encoded once into a `ByteBuffer`; the same buffer is then written
/// to every recipient connection and, for `direct` and `room`, published on the
/// backplane unchanged.
public enum ServerFrame {
    private static let allocator = ByteBufferAllocator()

    /// `{"type":"welcome","user":…,"gateway":…}`, the first frame on every connection.
    /// With history on, `position` is the top of the user's stream: `,"position":{"epoch":…,"offset":N}`.
    public static func welcome(user: UserID, gateway: String, position: StreamPosition? = nil) -> ByteBuffer {
        var text = #"{"type":"welcome","user":"#
        JSONText.appendQuoted(user.rawValue, to: &text)
        text += #","gateway":"#
        JSONText.appendQuoted(gateway, to: &text)
        if let position { text += #","position":"# + positionJSON(position) }
        text += "}"
        return allocator.buffer(string: text)
    }

    /// `{"epoch":"E","offset":N}` (an epoch is `[A-Za-z0-9_-]`, so it needs no escaping).
    public static func positionJSON(_ position: StreamPosition) -> String {
        #"{"epoch":""# + position.epoch + #"","offset":"# + String(position.offset) + "}"
    }

    /// The ack of a `join` (with its room stream's `position`) or a `resume`/`join` with
    /// `since` (with `recovered`, and `reason` when not recovered).
    public static func ack(correlationID: CorrelationID?, position: StreamPosition, recovered: Bool? = nil, reason: String? = nil) -> ByteBuffer {
        var text = #"{"type":"ack""#
        if let id = correlationID { text += #","id":"# + id.jsonText }
        if let recovered { text += recovered ? #","recovered":true"# : #","recovered":false"# }
        if let reason { text += #","reason":""# + reason + "\"" }
        text += #","position":"# + positionJSON(position) + "}"
        return allocator.buffer(string: text)
    }

    /// The ack of a direct message kept for a recipient connected nowhere (history on).
    public static func ackRecipientOffline(correlationID: CorrelationID?, offset: UInt64) -> ByteBuffer {
        var text = #"{"type":"ack""#
        if let id = correlationID { text += #","id":"# + id.jsonText }
        text += #","offset":"# + String(offset) + #","recipient_offline":true}"#
        return allocator.buffer(string: text)
    }

    /// `{"type":"direct","from":…,"to":…,"data":…}` as every connection of the recipient gets it.
    public static func direct(from: UserID, to: UserID, data: ByteBuffer) -> ByteBuffer {
        var frame = directHead(from: from, to: to, data: data)
        frame.writeInteger(UInt8(ascii: "}"))
        return frame
    }

    /// ``direct(from:to:data:)`` without its closing brace: a history store completes it
    /// with the offset and epoch.
    public static func directHead(from: UserID, to: UserID, data: ByteBuffer) -> ByteBuffer {
        var head = #"{"type":"direct","from":"#
        JSONText.appendQuoted(from.rawValue, to: &head)
        head += #","to":"#
        JSONText.appendQuoted(to.rawValue, to: &head)
        head += #","data":"#
        return assemble(head: head, data: data, closed: false)
    }

    /// `{"type":"broadcast","from":…,"data":…}`: every connection on every gateway gets it
    /// (published by a backend through `POST /v1/publish`).
    public static func broadcast(from: UserID, data: ByteBuffer) -> ByteBuffer {
        var head = #"{"type":"broadcast","from":"#
        JSONText.appendQuoted(from.rawValue, to: &head)
        head += #","data":"#
        return assemble(head: head, data: data)
    }

    /// `{"type":"room","room":…,"from":…,"data":…}` as every member connection gets it.
    public static func room(_ room: RoomID, from: UserID, data: ByteBuffer) -> ByteBuffer {
        var frame = roomHead(room, from: from, data: data)
        frame.writeInteger(UInt8(ascii: "}"))
        return frame
    }

    /// ``room(_:from:data:)`` without its closing brace.
    public static func roomHead(_ room: RoomID, from: UserID, data: ByteBuffer) -> ByteBuffer {
        var head = #"{"type":"room","room":"#
        JSONText.appendQuoted(room.rawValue, to: &head)
        head += #","from":"#
        JSONText.appendQuoted(from.rawValue, to: &head)
        head += #","data":"#
        return assemble(head: head, data: data, closed: false)
    }

    /// The answer to `presence`: `{"type":"presence","room":…,"id":…,"users":[{"user":…,"connections":N},…],"count":N}`,
    /// with `"truncated":true` when `users` lists fewer than `count`.
    public static func presence(room: RoomID, correlationID: CorrelationID?, users: [(user: UserID, connections: Int)], count: Int) -> ByteBuffer {
        var text = #"{"type":"presence","room":"#
        JSONText.appendQuoted(room.rawValue, to: &text)
        if let id = correlationID { text += #","id":"# + id.jsonText }
        text += #","users":"# + presenceUsersJSON(users)
        text += #","count":"# + String(count)
        if users.count < count { text += #","truncated":true"# }
        text += "}"
        return allocator.buffer(string: text)
    }

    /// `[{"user":…,"connections":N},…]`, shared by the `presence` frame and `GET /v1/presence`.
    public static func presenceUsersJSON(_ users: [(user: UserID, connections: Int)]) -> String {
        var text = "["
        for (index, entry) in users.enumerated() {
            if index > 0 { text += "," }
            text += #"{"user":"#
            JSONText.appendQuoted(entry.user.rawValue, to: &text)
            text += #","connections":"# + String(entry.connections) + "}"
        }
        return text + "]"
    }

    /// `{"type":"joined","room":…,"user":…}`: the user's first connection in the room, on any gateway.
    public static func joined(room: RoomID, user: UserID) -> ByteBuffer {
        presenceEvent(#"{"type":"joined","room":"#, room: room, user: user)
    }

    /// `{"type":"left","room":…,"user":…}`: the user's last connection in the room is gone everywhere (after the grace).
    public static func left(room: RoomID, user: UserID) -> ByteBuffer {
        presenceEvent(#"{"type":"left","room":"#, room: room, user: user)
    }

    /// Whether a room delivery is a `joined` or `left` event (only gateways write frames
    /// that begin so: a client's `data` always follows a `room` type).
    public static func isPresenceEvent(_ frame: ByteBuffer) -> Bool {
        frame.readableBytesView.starts(with: #"{"type":"joined""#.utf8) || frame.readableBytesView.starts(with: #"{"type":"left""#.utf8)
    }

    /// Whether a `joined` / `left` frame (``isPresenceEvent(_:)``) is about `user`: it ends in their `"user"` member.
    public static func isPresenceEvent(_ frame: ByteBuffer, about user: UserID) -> Bool {
        var tail = #","user":"#
        JSONText.appendQuoted(user.rawValue, to: &tail)
        tail += "}"
        let bytes = frame.readableBytesView
        let suffix = Array(tail.utf8)
        return bytes.count >= suffix.count && bytes.suffix(suffix.count).elementsEqual(suffix)
    }

    private static func presenceEvent(_ head: String, room: RoomID, user: UserID) -> ByteBuffer {
        var text = head
        JSONText.appendQuoted(room.rawValue, to: &text)
        text += #","user":"#
        JSONText.appendQuoted(user.rawValue, to: &text)
        text += "}"
        return allocator.buffer(string: text)
    }

    /// `{"type":"ack","id":…}`; without `id` when the client gave none.
    public static func ack(correlationID: CorrelationID?) -> ByteBuffer {
        simple(type: "ack", correlationID: correlationID)
    }

    /// `{"type":"pong","id":…}`.
    public static func pong(correlationID: CorrelationID?) -> ByteBuffer {
        simple(type: "pong", correlationID: correlationID)
    }

    /// `{"type":"error","id":…,"code":…,"message":…}`.
    public static func error(_ error: ProtocolError) -> ByteBuffer {
        var text = #"{"type":"error""#
        if let id = error.correlationID { text += #","id":"# + id.jsonText }
        text += #","code":""# + error.code.rawValue + #"","message":"#
        JSONText.appendQuoted(error.message, to: &text)
        text += "}"
        return allocator.buffer(string: text)
    }

    private static func simple(type: StaticString, correlationID: CorrelationID?) -> ByteBuffer {
        var text = #"{"type":""# + "\(type)" + "\""
        if let id = correlationID { text += #","id":"# + id.jsonText }
        text += "}"
        return allocator.buffer(string: text)
    }

    /// `closed: false` leaves the brace off (and room for a history tail).
    private static func assemble(head: String, data: ByteBuffer, closed: Bool = true) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: head.utf8.count + data.readableBytes + (closed ? 1 : 48))
        buffer.writeString(head)
        buffer.writeImmutableBuffer(data)
        if closed { buffer.writeInteger(UInt8(ascii: "}")) }
        return buffer
    }
}
