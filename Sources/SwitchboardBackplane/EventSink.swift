public import NIOCore

/// Where a gateway copies what its clients send, for background workers
/// (`--events-exchange`, docs/workers.md).
///
/// Fire and forget: the calls enqueue and return, on any thread, and never block or
/// fail the client's own message. Messages published through the server API
/// (`POST /v1/publish`) are not copied, so a worker that answers events through the
/// API cannot loop.
public protocol EventSink: Sendable {
    /// A client message the gateway accepted: `frame` exactly as its recipients get it.
    func clientMessage(_ frame: ByteBuffer, to address: BackplaneAddress)

    /// A direct message that reached no gateway (the sender got `recipient_offline`).
    func undelivered(_ frame: ByteBuffer, to address: BackplaneAddress)
}
