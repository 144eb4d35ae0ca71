public import NIOCore

/// One RESP2 value from the server: a reply to a command, or a Pub/Sub push.
public enum RedisValue: Sendable, Equatable {
    /// `+OK`
    case simpleString(String)
    /// `-ERR …`
    case error(String)
    /// `:42`
    case integer(Int64)
    /// `$5\r\nhello`: binary-safe bytes.
    case bulkString(ByteBuffer)
    /// `*3 …`
    case array([RedisValue])
    /// `$-1` or `*-1`
    case null

    /// The text of a simple or bulk string; nil for other kinds.
    public var string: String? {
        switch self {
        case .simpleString(let text): text
        case .bulkString(let bytes): String(buffer: bytes)
        default: nil
        }
    }
}
