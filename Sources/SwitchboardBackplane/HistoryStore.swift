public import NIOCore
public import ServiceLifecycle
public import SwitchboardProtocol

/// One stored message: its offset and the exact frame recipients got.
public struct HistoryEntry: Sendable, Equatable {
    public var offset: UInt64
    /// The frame with its `offset` and `epoch`, as it was published.
    public var frame: ByteBuffer

    public init(offset: UInt64, frame: ByteBuffer) {
        self.offset = offset
        self.frame = frame
    }
}

/// What an append produced.
public struct HistoryAppend: Sendable {
    /// The position the message got.
    public var position: StreamPosition
    /// The complete frame, `offset` and `epoch` included: what recipients get.
    public var frame: ByteBuffer
    /// Set when the store also published the frame (``HistoryStore/publishesOnAppend``).
    public var published: PublishOutcome?

    public init(position: StreamPosition, frame: ByteBuffer, published: PublishOutcome? = nil) {
        self.position = position
        self.frame = frame
        self.published = published
    }
}

/// What a read found: the top of the stream and, when asked for, the messages after an offset.
public struct HistoryRange: Sendable {
    /// The stream's epoch and its last offset (0 for a stream with no messages yet).
    public var top: StreamPosition
    /// The retained messages after the offset asked for, oldest first, at most the limit.
    /// Empty when more than the limit are missing: the caller cannot recover anyway.
    public var entries: [HistoryEntry]

    public init(top: StreamPosition, entries: [HistoryEntry]) {
        self.top = top
        self.entries = entries
    }
}

/// How much a history store keeps.
public struct HistoryRetention: Sendable, Equatable {
    /// Messages kept per stream; older ones are dropped.
    public var size: Int
    /// How long a message is kept after it was written.
    public var ttl: Duration
    /// How long a stream's epoch and top offset are kept after its last use: longer than
    /// the messages, so that a client away longer is told "not recovered" rather than
    /// handed a new epoch's offsets as if they continued its old ones.
    public var metadataTTL: Duration
    /// The most bytes of messages ``MemoryHistory`` keeps per stream (oldest dropped first):
    /// its memory is the gateway's. A Redis history is bounded by `size` and Redis's memory.
    public var maximumStreamBytes: Int

    public init(size: Int = 1_000, ttl: Duration = .seconds(300), metadataTTL: Duration = .seconds(86_400), maximumStreamBytes: Int = 1 << 20) {
        self.size = size
        self.ttl = ttl
        self.metadataTTL = metadataTTL
        self.maximumStreamBytes = maximumStreamBytes
    }
}

/// A history operation that failed; the gateway answers `history_unavailable`.
public struct HistoryError: Error, Sendable, CustomStringConvertible {
    /// What happened, for logs.
    public var reason: String
    /// The underlying error, when there is one.
    public var cause: (any Error & Sendable)?

    public init(_ reason: String, cause: (any Error & Sendable)? = nil) {
        self.reason = reason
        self.cause = cause
    }

    public var description: String {
        if let cause { return "\(reason) (\(cause))" }
        return reason
    }
}

/// Keeps the recent messages of every user stream and room stream, and assigns their offsets.
///
/// The offset is assigned atomically with the write, so the offset order of a stream is
/// the order of its history, and a read that returns top N holds every retained message
/// up to N. Streams are per user and per room: a read touches one stream, never a global log.
///
/// Threading: like ``Backplane``, every method may be called from any thread and must not
/// block; completions run on the store's thread (or inline, for ``MemoryHistory``).
public protocol HistoryStore: Service {
    /// What the store keeps.
    var retention: HistoryRetention { get }

    /// Whether ``append(_:to:completion:)`` also publishes the frame on the backplane (Redis
    /// history on the same Redis as the backplane: one script writes and publishes), so the
    /// gateway must not publish it again.
    var publishesOnAppend: Bool { get }

    /// Whether the store can take operations now; drives `/readyz` with the backplane's.
    var isReady: Bool { get }

    /// Appends a message to `stream` and gives it the next offset.
    ///
    /// - Parameter head: the frame without its closing `}`; the store completes it with
    ///   `,"offset":N,"epoch":"E"}`.
    func append(_ head: ByteBuffer, to stream: BackplaneAddress, completion: @escaping @Sendable (Result<HistoryAppend, HistoryError>) -> Void)

    /// Reads the top of `stream` and, when `after` is given, the retained messages after
    /// that offset, oldest first: at most `limit`, and none when more than `limit` are
    /// missing up to the top, unless `partial` (then the first `limit` after `after`).
    ///
    /// A stream that does not exist yet is created (a new epoch, top 0), so a position
    /// handed out for it stays valid for its first message.
    func read(
        _ stream: BackplaneAddress,
        after: UInt64?,
        limit: Int,
        partial: Bool,
        completion: @escaping @Sendable (Result<HistoryRange, HistoryError>) -> Void
    )
}

extension HistoryStore {
    /// Async form of ``read(_:after:limit:partial:completion:)``.
    public func read(_ stream: BackplaneAddress, after: UInt64?, limit: Int, partial: Bool = false) async throws(HistoryError) -> HistoryRange {
        let result = await withCheckedContinuation { continuation in
            read(stream, after: after, limit: limit, partial: partial) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    /// Async form of ``append(_:to:completion:)``.
    public func append(_ head: ByteBuffer, to stream: BackplaneAddress) async throws(HistoryError) -> HistoryAppend {
        let result = await withCheckedContinuation { continuation in
            append(head, to: stream) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }
}

/// The tail every stored frame ends with: `,"offset":N,"epoch":"E"}`.
public enum HistoryFrame {
    /// Completes `head` (a frame without its closing brace) with the position.
    public static func complete(_ head: ByteBuffer, with position: StreamPosition) -> ByteBuffer {
        let tail = #","offset":"# + String(position.offset) + #","epoch":""# + position.epoch + #""}"#
        var frame = ByteBuffer()
        frame.reserveCapacity(head.readableBytes + tail.utf8.count)
        frame.writeImmutableBuffer(head)
        frame.writeString(tail)
        return frame
    }

    /// Completes `head` without a position (history off).
    public static func complete(_ head: ByteBuffer) -> ByteBuffer {
        var frame = ByteBuffer()
        frame.reserveCapacity(head.readableBytes + 1)
        frame.writeImmutableBuffer(head)
        frame.writeInteger(UInt8(ascii: "}"))
        return frame
    }

    /// The position at the end of a stored frame, or nil when it has none.
    ///
    /// Only the tail is read (at most 120 bytes). A frame from a gateway with history off
    /// ends with its `data` and `}`; `data` cannot fake the tail, because with history on
    /// the store always appends the real one after it, and with it off nobody reads it.
    public static func position(of frame: ByteBuffer) -> StreamPosition? {
        let view = frame.readableBytesView
        let count = view.count
        guard count > 24 else { return nil }
        let start = view.startIndex
        // Walk back over `"}` and the epoch.
        guard view[start + count - 1] == UInt8(ascii: "}"), view[start + count - 2] == UInt8(ascii: "\"") else { return nil }
        var index = count - 3
        let epochEnd = index + 1
        while index >= 0, count - index < 120, view[start + index] != UInt8(ascii: "\"") { index -= 1 }
        guard index > 0, view[start + index] == UInt8(ascii: "\"") else { return nil }
        let epochStart = index + 1
        let epochMarker = Array(#","epoch":""#.utf8)
        let markerStart = epochStart - epochMarker.count
        guard markerStart > 0, view[(start + markerStart)..<(start + epochStart)].elementsEqual(epochMarker) else { return nil }
        // The digits of the offset, then `,"offset":`.
        var digitsStart = markerStart
        while digitsStart > 0, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(view[start + digitsStart - 1]) { digitsStart -= 1 }
        let digitCount = markerStart - digitsStart
        guard digitCount > 0, digitCount <= 19 else { return nil }
        let offsetMarker = Array(#","offset":"#.utf8)
        let offsetMarkerStart = digitsStart - offsetMarker.count
        guard offsetMarkerStart > 0, view[(start + offsetMarkerStart)..<(start + digitsStart)].elementsEqual(offsetMarker) else { return nil }
        var offset: UInt64 = 0
        for byte in view[(start + digitsStart)..<(start + markerStart)] {
            let (times, overflow1) = offset.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times.addingReportingOverflow(UInt64(byte - UInt8(ascii: "0")))
            guard !overflow1, !overflow2 else { return nil }
            offset = sum
        }
        let epoch = String(decoding: view[(start + epochStart)..<(start + epochEnd)], as: UTF8.self)
        guard StreamPosition.isValidEpoch(epoch) else { return nil }
        return StreamPosition(epoch: epoch, offset: offset)
    }
}
