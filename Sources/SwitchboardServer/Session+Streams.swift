import NIOCore
import SwitchboardBackplane
import SwitchboardProtocol

/// Where one stream (the user's, or a room's) stands on one connection, with history on.
///
/// The gateway writes every stream to every connection in offset order, each offset
/// once: a message that arrives before its predecessor (two gateways publishing to one
/// room over RabbitMQ can deliver 6 before 5) waits in `pending` for up to the gap wait;
/// if the predecessor still has not come, the missing range is read from history.
struct StreamCursor {
    enum Mode: Equatable {
        /// The stream's position is being read (before `welcome`, or before a join's ack):
        /// live messages wait.
        case opening(Purpose)
        case live
        /// A `resume` (or a `join` with `since`) is being served: live messages wait.
        case recovering(Purpose)
        /// A gap is being filled from history: live messages keep arriving into `pending`.
        case fillingGap
    }

    /// What a history read is for; it comes back with the result.
    enum Purpose: Equatable {
        case welcome
        case join(correlationID: CorrelationID?, since: StreamPosition?)
        case resume(correlationID: CorrelationID?, since: StreamPosition)
        case gap
    }

    var mode: Mode
    /// Known once the first read returned.
    var epoch = ""
    /// The position handed to the client (welcome, join ack): offsets up to it were never
    /// written on this connection.
    var base: UInt64 = 0
    /// Every offset from `base + 1` to here was written, in order.
    var delivered: UInt64 = 0
    /// A `resume` / `join` with `since` was served (or is being): a second is refused.
    var resumed = false
    /// Messages that arrived out of order or while waiting, by offset.
    var pending: [UInt64: ByteBuffer] = [:]
    var pendingBytes = 0
    var gapCheckArmed = false
    /// The token of the history read this cursor waits for, if any.
    var awaitedRead: Int?
    /// A join's position read was asked for (a second join while it is out only gets an ack).
    var readIssued = false
    /// The offset a gap fill must reach: what was missing before the first waiting message.
    var gapTarget: UInt64 = 0
    /// A failed gap read was retried once.
    var gapRetried = false

    var position: StreamPosition { StreamPosition(epoch: epoch, offset: delivered) }

    /// The position is known: nothing at or below it will be written.
    mutating func open(at top: StreamPosition) {
        epoch = top.epoch
        base = top.offset
        delivered = top.offset
        mode = .live
    }

    /// Writes what can be written in order: `frame`'s offset is `delivered + 1`, then any
    /// pending successors. Returns the frames in order.
    mutating func takeInOrder() -> [ByteBuffer] {
        var frames: [ByteBuffer] = []
        while let next = pending.removeValue(forKey: delivered + 1) {
            pendingBytes -= next.readableBytes
            frames.append(next)
            delivered += 1
        }
        // Anything left at or below `delivered` came twice.
        if !pending.isEmpty {
            for offset in pending.keys where offset <= delivered {
                pendingBytes -= pending.removeValue(forKey: offset)?.readableBytes ?? 0
            }
        }
        return frames
    }

    /// Holds a message for later; false when it came twice.
    mutating func hold(_ frame: ByteBuffer, offset: UInt64) -> Bool {
        guard offset > delivered || mode != .live, pending[offset] == nil else { return false }
        pending[offset] = frame
        pendingBytes += frame.readableBytes
        return true
    }

    var hasGap: Bool { !pending.isEmpty && pending[delivered + 1] == nil }
}

/// Whether a `resume` or a `join` with `since` can be served, all or nothing (centrifuge's
/// `isStreamRecovered`): the epoch is the same, the client is not ahead of the stream,
/// no more than the limit is missing, and history still holds every message from
/// `since + 1` to the top.
enum RecoveryDecision: Equatable {
    case recovered([HistoryEntry])
    case notRecovered(NotRecovered)

    /// Why not; the wire `reason` and the metric's label.
    enum NotRecovered: String, CaseIterable, Sendable {
        case epochChanged = "epoch_changed"
        case expired
        case limitExceeded = "limit_exceeded"
        /// The client claims an offset past the top: not from this stream.
        case ahead
    }

    static func decide(since: StreamPosition, range: HistoryRange, limit: Int) -> RecoveryDecision {
        let top = range.top
        guard since.epoch == top.epoch else { return .notRecovered(.epochChanged) }
        guard since.offset <= top.offset else { return .notRecovered(.ahead) }
        let missing = top.offset - since.offset
        if missing == 0 { return .recovered([]) }
        guard missing <= UInt64(max(0, limit)) else { return .notRecovered(.limitExceeded) }
        let entries = range.entries.filter { $0.offset > since.offset && $0.offset <= top.offset }
        // Contiguous from since + 1 to the top: the count says it, since offsets are unique and ascending.
        guard entries.count == Int(missing), entries.first?.offset == since.offset + 1, entries.last?.offset == top.offset else {
            return .notRecovered(.expired)
        }
        return .recovered(entries)
    }
}
