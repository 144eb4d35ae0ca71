public import NIOCore
import ServiceLifecycle
import SwitchboardProtocol
import Synchronization

/// History kept in this process: for one gateway (the embedded default with the memory
/// backplane). A restart loses it, and every stream starts a new epoch, so clients that
/// resume afterwards are told "not recovered" rather than handed a wrong range.
///
/// Threading: every method takes a lock briefly; completions run inline on the caller's thread.
public final class MemoryHistory: HistoryStore {
    private struct Stream {
        var epoch: String
        var top: UInt64 = 0
        var entries = CircularBuffer<(offset: UInt64, frame: ByteBuffer, written: NIODeadline)>()
        var bytes = 0
        var lastUsed: NIODeadline
    }

    private struct State {
        var streams: [BackplaneAddress: Stream] = [:]
        var writesSinceSweep = 0
    }

    public let retention: HistoryRetention
    public var publishesOnAppend: Bool { false }
    public var isReady: Bool { true }
    private let state = Mutex(State())
    /// Injected by tests to move time; `.now()` otherwise.
    private let clock: @Sendable () -> NIODeadline

    public init(retention: HistoryRetention = HistoryRetention(), clock: @escaping @Sendable () -> NIODeadline = { .now() }) {
        self.retention = retention
        self.clock = clock
    }

    /// Streams held now (tests check that stale ones go).
    public var streamCount: Int { state.withLock { $0.streams.count } }

    public func run() async throws {
        try? await gracefulShutdown()
    }

    public func append(_ head: ByteBuffer, to stream: BackplaneAddress, completion: @escaping @Sendable (Result<HistoryAppend, HistoryError>) -> Void)
    {
        let now = clock()
        let result = state.withLock { state -> HistoryAppend in
            state.writesSinceSweep += 1
            // Streams of users who left: dropped once their metadata expired, in one pass
            // every so many writes so that no write pays for all.
            if state.writesSinceSweep >= 4_096 {
                state.writesSinceSweep = 0
                sweep(&state, now: now)
            }
            var entry = state.streams.removeValue(forKey: stream) ?? Stream(epoch: StreamPosition.randomEpoch(), lastUsed: now)
            prune(&entry, now: now)
            entry.top += 1
            let position = StreamPosition(epoch: entry.epoch, offset: entry.top)
            let frame = HistoryFrame.complete(head, with: position)
            entry.entries.append((entry.top, frame, now))
            entry.bytes += frame.readableBytes
            while entry.entries.count > retention.size || (entry.bytes > retention.maximumStreamBytes && entry.entries.count > 1) {
                entry.bytes -= entry.entries.removeFirst().frame.readableBytes
            }
            entry.lastUsed = now
            state.streams[stream] = entry
            return HistoryAppend(position: position, frame: frame)
        }
        completion(.success(result))
    }

    public func read(
        _ stream: BackplaneAddress,
        after: UInt64?,
        limit: Int,
        partial: Bool,
        completion: @escaping @Sendable (Result<HistoryRange, HistoryError>) -> Void
    ) {
        let now = clock()
        let range = state.withLock { state -> HistoryRange in
            // Taken out and put back: mutated while the dictionary also held it, the buffer would be copied.
            var entry = state.streams.removeValue(forKey: stream) ?? Stream(epoch: StreamPosition.randomEpoch(), lastUsed: now)
            prune(&entry, now: now)
            entry.lastUsed = now
            defer { state.streams[stream] = entry }
            let top = StreamPosition(epoch: entry.epoch, offset: entry.top)
            let limit = UInt64(max(0, limit))
            guard let after, after < entry.top, partial || entry.top - after <= limit else {
                return HistoryRange(top: top, entries: [])
            }
            let entries = entry.entries.lazy.filter { $0.offset > after }.prefix(Int(limit)).map { HistoryEntry(offset: $0.offset, frame: $0.frame) }
            return HistoryRange(top: top, entries: Array(entries))
        }
        completion(.success(range))
    }

    private func prune(_ stream: inout Stream, now: NIODeadline) {
        let oldest = now - TimeAmount(retention.ttl)
        while let first = stream.entries.first, first.written < oldest { stream.bytes -= stream.entries.removeFirst().frame.readableBytes }
    }

    /// Drops streams unused for the metadata TTL, and expired messages of the others.
    private func sweep(_ state: inout State, now: NIODeadline) {
        let stale = now - TimeAmount(retention.metadataTTL)
        state.streams = state.streams.filter { $0.value.lastUsed >= stale }
        for key in Array(state.streams.keys) {
            guard var entry = state.streams.removeValue(forKey: key) else { continue }
            prune(&entry, now: now)
            state.streams[key] = entry
        }
    }
}
