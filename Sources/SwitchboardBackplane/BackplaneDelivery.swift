public import NIOCore

/// One frame that arrived from the backplane for an address this gateway has bound.
public struct BackplaneDelivery: Sendable {
    /// The address it was published to.
    public var address: BackplaneAddress
    /// The exact text frame the recipients get, as the publishing gateway encoded it.
    public var frame: ByteBuffer

    public init(address: BackplaneAddress, frame: ByteBuffer) {
        self.address = address
        self.frame = frame
    }
}

/// Receives deliveries from a backplane, in batches, on the backplane's own thread.
///
/// It must not block: it hands frames to connections' event loops and returns.
public typealias BackplaneDeliveryHandler = @Sendable ([BackplaneDelivery]) -> Void
