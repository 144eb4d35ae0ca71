public import NIOCore

/// Encodes the frames the gateway sends (wire protocol v1, docs/protocol.md).
///
/// Each frame is encoded once into a `ByteBuffer`; the same buffer is then written
/// to every recipient connection and, for `direct` and `room`, published on the
/// backplane unchanged.
public enum ServerFrame {
    private static let allocator = ByteBufferAllocator()

    /// `{"type":"welcome","user":…,"gateway":…}`, the first frame on every connection.
    public static func welcome(user: UserID, gateway: String) -> ByteBuffer {
        var text = #"{"type":"welcome","user":"#
        JSONText.appendQuoted(user.rawValue, to: &text)
        text += #","gateway":"#
        JSONText.appendQuoted(gateway, to: &text)
        text += "}"
        return allocator.buffer(string: text)
    }

    /// `{"type":"direct","from":…,"to":…,"data":…}` as every connection of the recipient gets it.
    public static func direct(from: UserID, to: UserID, data: ByteBuffer) -> ByteBuffer {
        var head = #"{"type":"direct","from":"#
        JSONText.appendQuoted(from.rawValue, to: &head)
        head += #","to":"#
        JSONText.appendQuoted(to.rawValue, to: &head)
        head += #","data":"#
        return assemble(head: head, data: data)
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
        var head = #"{"type":"room","room":"#
        JSONText.appendQuoted(room.rawValue, to: &head)
        head += #","from":"#
        JSONText.appendQuoted(from.rawValue, to: &head)
        head += #","data":"#
        return assemble(head: head, data: data)
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

    private static func assemble(head: String, data: ByteBuffer) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: head.utf8.count + data.readableBytes + 1)
        buffer.writeString(head)
        buffer.writeImmutableBuffer(data)
        buffer.writeInteger(UInt8(ascii: "}"))
        return buffer
    }
}
