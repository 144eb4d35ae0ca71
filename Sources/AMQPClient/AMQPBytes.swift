internal import CRabbitMQ
import NIOCore

// The pointer rules of rabbitmq-c live here. An `amqp_bytes_t` made from Swift memory is
// valid only inside the closure that made it: rabbitmq-c copies what it sends before
// returning, so no call below keeps the pointer. Values coming back from rabbitmq-c live
// in its frame pools until `amqp_maybe_release_buffers`: copy them out at once.

/// Calls `body` with an `amqp_bytes_t` over the UTF-8 of `string`. Do not escape the pointer.
func withAMQPBytes<T, E: Error>(_ string: String, _ body: (amqp_bytes_t) throws(E) -> T) throws(E) -> T {
    var string = string
    let result: Result<T, E> = string.withUTF8 { buffer in
        let bytes = amqp_bytes_t(len: buffer.count, bytes: UnsafeMutableRawPointer(mutating: buffer.baseAddress))
        do throws(E) {
            return .success(try body(bytes))
        } catch {
            return .failure(error)
        }
    }
    return try result.get()
}

/// Calls `body` with an `amqp_bytes_t` over the readable bytes of `buffer`. Do not escape the pointer.
func withAMQPBytes<T>(_ buffer: ByteBuffer, _ body: (amqp_bytes_t) -> T) -> T {
    buffer.withUnsafeReadableBytes { raw in
        body(amqp_bytes_t(len: raw.count, bytes: UnsafeMutableRawPointer(mutating: raw.baseAddress)))
    }
}

extension amqp_bytes_t {
    /// A Swift copy of the bytes (UTF-8 decoded; invalid sequences become U+FFFD).
    var string: String {
        guard len > 0, let bytes else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: bytes, count: len), as: UTF8.self)
    }

    /// Appends a copy of the bytes to `buffer`.
    func append(to buffer: inout ByteBuffer) {
        guard len > 0, let bytes else { return }
        buffer.writeBytes(UnsafeRawBufferPointer(start: bytes, count: len))
    }
}

/// rabbitmq-c's text for a status code.
func amqpErrorText(_ status: Int32) -> String {
    guard let text = amqp_error_string2(status) else { return "status \(status)" }
    return String(cString: text)
}
