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
