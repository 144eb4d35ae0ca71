import NIOCore
import SwitchboardBackplane
import SwitchboardProtocol
import SwitchboardRegistry

/// How the rest of the gateway reaches one session: any thread may call it, and the
/// call runs on the session's event loop.
struct SessionHandle: Sendable {
    let connectionID: ConnectionID
    private let session: NIOLoopBound<SessionHandler>

    init(connectionID: ConnectionID, session: SessionHandler, eventLoop: any EventLoop) {
        self.connectionID = connectionID
        self.session = NIOLoopBound(session, eventLoop: eventLoop)
    }

    /// Runs `body` with the session on its event loop: inline when already there.
    func withSession(_ body: @escaping @Sendable (SessionHandler) -> Void) {
        let session = self.session
        if session.eventLoop.inEventLoop {
            body(session.value)
        } else {
            session.eventLoop.execute { body(session.value) }
        }
    }

    /// The event loop the session runs on.
    var eventLoop: any EventLoop { session.eventLoop }

    /// Writes an already-encoded text frame to the client, in its stream's order, for a
    /// caller on the session's event loop running a batch: the session when it left a flush
    /// for the batch's end (``SessionHandler/flushDeferred()``).
    func deliverInBatch(_ frame: ByteBuffer, address: BackplaneAddress, position: StreamPosition?, isPresenceEvent: Bool) -> SessionHandler? {
        let session = self.session.value
        return session.sendInBatch(frame, address: address, position: position, isPresenceEvent: isPresenceEvent) ? session : nil
    }
}
