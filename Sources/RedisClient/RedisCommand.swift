public import NIOCore

/// A command ready for the wire: a RESP array of bulk strings, encoded once by the caller.
public struct RedisCommand: Sendable {
    /// The RESP bytes.
    public let bytes: ByteBuffer
    /// The command's name, for logs and errors (`PUBLISH`, `SUBSCRIBE`).
    public let name: String

    /// Encodes `name` and its arguments; each argument is sent as is, binary-safe.
    public init(_ name: String, _ arguments: [ByteBuffer]) {
        self.bytes = Self.encode(name, arguments)
        self.name = name
    }

    /// Encodes `name` and text arguments.
    public init(_ name: String, _ arguments: String...) {
        self.init(name, arguments.map { ByteBuffer(string: $0) })
    }

    private static func encode(_ name: String, _ arguments: [ByteBuffer]) -> ByteBuffer {
        var size = 16 + name.utf8.count
        for argument in arguments { size += 16 + argument.readableBytes }
        var buffer = ByteBuffer()
        buffer.reserveCapacity(size)
        buffer.writeString("*\(arguments.count + 1)\r\n$\(name.utf8.count)\r\n\(name)\r\n")
        for var argument in arguments {
            buffer.writeString("$\(argument.readableBytes)\r\n")
            buffer.writeBuffer(&argument)
            buffer.writeString("\r\n")
        }
        return buffer
    }
}
