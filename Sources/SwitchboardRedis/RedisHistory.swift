public import Logging
public import NIOCore
import NIOPosix
public import RedisClient
import ServiceLifecycle
public import SwitchboardBackplane
public import SwitchboardProtocol
import Synchronization

/// History in Redis, shared by every gateway that points at the same server (with any backplane).
///
/// Two keys per stream, named by the stream's routing key as a hash tag (one Redis Cluster
/// slot per stream): `<prefix>:h:{user.bob}`, a Redis stream of the messages (entry id
/// `<offset>-0`, fields `f` the frame and `t` the write time in ms), and
/// `<prefix>:m:{user.bob}`, a hash of the epoch (`e`) and the top offset (`t`).
///
/// One Lua script per append increments the offset, completes the frame with it, appends
/// it (`XADD … MAXLEN ~ size`: trimmed by whole nodes, so at least `size` are kept), refreshes both expiries and, when Redis is also the backplane
/// (``init(configuration:retention:publishing:eventLoop:logger:)`` with `publishing`),
/// publishes it: the offset order is then the delivery order, and a gateway that dies
/// between writing and publishing cannot exist. A read is one script too: top and range
/// from the same instant. The messages expire `ttl` after the stream's last write and are
/// filtered by their own write time; the metadata lives `metadataTTL` after the last use,
/// so a client away longer than `ttl` is told "not recovered" in the same epoch, and a
/// flushed or evicted stream gets a new epoch.
///
/// With a Sentinel-managed Redis (`redis+sentinel://`) every epoch a client sees ends in
/// `-` and the first 8 characters of the master's replication id (`INFO replication`,
/// `master_replid`), read at every connect. Replication is asynchronous, so a promoted
/// replica can lack the newest writes and would hand their offsets out again; a
/// promotion gives the master a new replication id, so every stream's epoch changes
/// with it and clients are told `recovered: false` (`epoch_changed`) instead of a
/// silent gap.
public final class RedisHistory: HistoryStore {
    public let retention: HistoryRetention
    public var publishesOnAppend: Bool { naming != nil }
    private let connection: RedisConnection
    private let prefix: String
    private let naming: ChannelNaming?
    /// The digests `SCRIPT LOAD` answered on the current connection.
    private final class Digests: Sendable {
        let value = Mutex<(append: String, read: String)?>(nil)
    }
    private let scripts = Digests()
    /// What ends every epoch shown: "" without Sentinel, else `-` and the master's replication id (8 characters).
    private final class Generation: Sendable {
        let value = Mutex("")
    }
    private let generation = Generation()
    private let logger: Logger

    /// - Parameters:
    ///   - publishing: the Redis backplane on the same server, when there is one: appends
    ///     then also publish, on its channels and in its mode.
    public init(
        configuration: RedisConfiguration,
        prefix: String = "switchboard",
        retention: HistoryRetention,
        publishing: RedisBackplaneConfiguration? = nil,
        gatewayID: String,
        eventLoop: (any EventLoop)? = nil,
        logger: Logger
    ) {
        self.retention = retention
        self.prefix = prefix
        self.naming = publishing.map { ChannelNaming(mode: $0.mode, prefix: $0.prefix) }
        var logger = logger
        logger[metadataKey: LoggingKeys.gatewayID] = .string(gatewayID)
        self.logger = logger
        let scripts = self.scripts
        let generation = self.generation
        let sentinel = configuration.sentinel != nil
        connection = RedisConnection(
            configuration: configuration,
            name: "\(gatewayID)-history",
            eventLoop: eventLoop ?? MultiThreadedEventLoopGroup.singleton.next(),
            logger: logger,
            setUp: { setUp in
                // Loaded on every connect: a restarted Redis has no scripts.
                let loaded = setUp.loadScripts([HistoryScripts.append, HistoryScripts.read])
                let replication =
                    sentinel
                    ? setUp.send(RedisCommand("INFO", "replication"))
                    : setUp.channel.eventLoop.makeSucceededFuture(RedisValue.null)
                return loaded.and(replication).flatMapThrowing { digests, replication in
                    var suffix = ""
                    if sentinel {
                        guard let replid = Self.replicationID(in: replication) else {
                            throw RedisError(.protocolError, "INFO replication named no master_replid")
                        }
                        suffix = "-" + replid.prefix(8)
                    }
                    scripts.value.withLock { $0 = (digests[0], digests[1]) }
                    generation.value.withLock { $0 = suffix }
                }
            }
        )
    }

    public var isReady: Bool { connection.isOpen && !connection.isStalled }

    public func run() async throws {
        connection.start()
        try? await gracefulShutdown()
        await connection.shutdown()
    }

    public func append(_ head: ByteBuffer, to stream: BackplaneAddress, completion: @escaping @Sendable (Result<HistoryAppend, HistoryError>) -> Void)
    {
        let ttl = retention.ttl.wholeMilliseconds
        let metadataTTL = max(1, retention.metadataTTL.wholeMilliseconds / 1000)
        var channel = ByteBuffer()
        var payloadPrefix = ByteBuffer()
        if let naming {
            channel = naming.channel(forPublishing: stream)
            payloadPrefix = naming.payloadPrefix(for: stream)
        }
        let arguments: [ByteBuffer] = [
            head,
            ByteBuffer(string: String(max(1, retention.size))),
            ByteBuffer(string: String(max(1, ttl))),
            ByteBuffer(string: String(metadataTTL)),
            ByteBuffer(string: StreamPosition.randomEpoch()),
            channel,
            payloadPrefix,
            ByteBuffer(string: generation.value.withLock { $0 }),
        ]
        let naming = self.naming
        evaluate(\.append, script: HistoryScripts.append, stream: stream, arguments: arguments) { result in
            switch result {
            case .success(.array(let values)) where values.count == 3:
                guard let epoch = values[0].string, StreamPosition.isValidEpoch(epoch), case .integer(let offset) = values[1], offset > 0,
                    case .integer(let receivers) = values[2]
                else {
                    return completion(.failure(HistoryError("the append script answered \(values)")))
                }
                let position = StreamPosition(epoch: epoch, offset: UInt64(offset))
                var published: PublishOutcome?
                if let naming {
                    published =
                        switch (naming.mode, stream) {
                        case (.broadcast, _): .unknown
                        case (.channels, .user): receivers > 0 ? .routed : .noRecipient
                        case (.channels, _): .routed
                        }
                }
                completion(.success(HistoryAppend(position: position, frame: HistoryFrame.complete(head, with: position), published: published)))
            case .success(let other):
                completion(.failure(HistoryError("the append script answered \(other)")))
            case .failure(let error):
                completion(.failure(HistoryError("Redis did not take the history write", cause: error)))
            }
        }
    }

    public func read(
        _ stream: BackplaneAddress,
        after: UInt64?,
        limit: Int,
        partial: Bool,
        completion: @escaping @Sendable (Result<HistoryRange, HistoryError>) -> Void
    ) {
        let metadataTTL = max(1, retention.metadataTTL.wholeMilliseconds / 1000)
        let arguments: [ByteBuffer] = [
            ByteBuffer(string: after.map { String($0) } ?? "-1"),
            ByteBuffer(string: String(max(0, limit))),
            ByteBuffer(string: StreamPosition.randomEpoch()),
            ByteBuffer(string: String(metadataTTL)),
            ByteBuffer(string: partial ? "1" : "0"),
            ByteBuffer(string: generation.value.withLock { $0 }),
        ]
        let ttl = retention.ttl.wholeMilliseconds
        evaluate(\.read, script: HistoryScripts.read, stream: stream, arguments: arguments) { result in
            switch result {
            case .success(.array(let values)) where values.count == 4:
                guard let epoch = values[0].string, StreamPosition.isValidEpoch(epoch), case .integer(let top) = values[1], top >= 0,
                    case .array(let rows) = values[2], case .integer(let now) = values[3]
                else {
                    return completion(.failure(HistoryError("the read script answered \(values)")))
                }
                // Ages by Redis's clock, which also wrote them: gateways' clocks may differ.
                let oldest = now - ttl
                var entries: [HistoryEntry] = []
                entries.reserveCapacity(rows.count)
                for row in rows {
                    guard let entry = Self.entry(row, writtenAfter: oldest) else { continue }
                    entries.append(entry)
                }
                completion(.success(HistoryRange(top: StreamPosition(epoch: epoch, offset: UInt64(top)), entries: entries)))
            case .success(let other):
                completion(.failure(HistoryError("the read script answered \(other)")))
            case .failure(let error):
                completion(.failure(HistoryError("Redis did not answer the history read", cause: error)))
            }
        }
    }

    /// Runs a loaded script by digest (its text after a `SCRIPT FLUSH`).
    private func evaluate(
        _ digest: KeyPath<(append: String, read: String), String>,
        script: String,
        stream: BackplaneAddress,
        arguments: [ByteBuffer],
        completion: @escaping @Sendable (Result<RedisValue, RedisError>) -> Void
    ) {
        let keys = [ByteBuffer(string: "\(prefix):h:{\(stream.routingKey)}"), ByteBuffer(string: "\(prefix):m:{\(stream.routingKey)}")]
        let sha = scripts.value.withLock { $0?[keyPath: digest] }
        connection.evaluate(script: script, sha: sha, keys: keys, arguments: arguments, completion: completion)
    }

    /// `master_replid` from an `INFO replication` reply: 40 hex digits.
    static func replicationID(in reply: RedisValue) -> Substring? {
        guard let text = reply.string else { return nil }
        // "\r\n" is one Character in Swift: split on newlines of any kind.
        for line in text.split(whereSeparator: \.isNewline) where line.hasPrefix("master_replid:") {
            let id = line.dropFirst("master_replid:".count)
            guard id.count >= 8, id.allSatisfy(\.isHexDigit) else { return nil }
            return id
        }
        return nil
    }

    /// One `XRANGE` row, `[id, [f, frame, t, ms]]`; nil when malformed or older than the TTL.
    private static func entry(_ row: RedisValue, writtenAfter oldest: Int64) -> HistoryEntry? {
        guard case .array(let parts) = row, parts.count == 2, let id = parts[0].string, case .array(let fields) = parts[1],
            let offset = UInt64(id.prefix { $0 != "-" })
        else { return nil }
        var frame: ByteBuffer?
        var written: Int64?
        var index = 0
        while index + 1 < fields.count {
            switch fields[index].string {
            case "f": if case .bulkString(let bytes) = fields[index + 1] { frame = bytes }
            case "t": written = fields[index + 1].string.flatMap { Int64($0) }
            default: break
            }
            index += 2
        }
        guard let frame, let written, written >= oldest else { return nil }
        return HistoryEntry(offset: offset, frame: frame)
    }
}

/// The two scripts. Numbers are formatted with `%d`: Lua's default would write a large
/// offset as `1e+14`.
enum HistoryScripts {
    /// The epoch of the stream, created with `newEpoch` (and top 0) when its metadata is
    /// gone; messages left from a lost life of the stream are dropped with it.
    static func openStream(newEpoch: String) -> String {
        """
        local epoch = redis.call('HGET', KEYS[2], 'e')
        if not epoch then
          epoch = \(newEpoch)
          redis.call('HSET', KEYS[2], 'e', epoch, 't', 0)
          redis.call('DEL', KEYS[1])
        end

        """
    }

    /// KEYS: stream, meta. ARGV: head, size, ttl ms, metadata ttl s, new epoch, channel ('' to
    /// not publish), payload prefix, what ends the epoch shown (the Sentinel generation, or
    /// ''). Returns {epoch shown, offset, receivers or -1}. The write time is Redis's
    /// (`TIME`), so every gateway ages entries by one clock.
    static let append =
        openStream(newEpoch: "ARGV[5]") + """
            epoch = epoch .. ARGV[8]
            local offset = redis.call('HINCRBY', KEYS[2], 't', 1)
            redis.call('EXPIRE', KEYS[2], ARGV[4])
            local digits = string.format('%d', offset)
            local frame = ARGV[1] .. ',"offset":' .. digits .. ',"epoch":"' .. epoch .. '"}'
            local now = redis.call('TIME')
            local written = string.format('%d', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
            redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], digits .. '-0', 'f', frame, 't', written)
            redis.call('PEXPIRE', KEYS[1], ARGV[3])
            local receivers = -1
            if ARGV[6] ~= '' then receivers = redis.call('PUBLISH', ARGV[6], ARGV[7] .. frame) end
            return {epoch, offset, receivers}
            """

    /// KEYS: stream, meta. ARGV: after (-1 for the top only), limit, new epoch, metadata ttl s,
    /// partial ('1': the first `limit` after `after` even when more are missing), what ends
    /// the epoch shown. Returns {epoch shown, top, rows, now ms}; rows is empty when more
    /// than `limit` are missing (unless partial).
    static let read =
        openStream(newEpoch: "ARGV[3]") + """
            epoch = epoch .. ARGV[6]
            redis.call('EXPIRE', KEYS[2], ARGV[4])
            local top = tonumber(redis.call('HGET', KEYS[2], 't'))
            local after = tonumber(ARGV[1])
            local limit = tonumber(ARGV[2])
            local now = redis.call('TIME')
            local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
            if after < 0 or after >= top or (ARGV[5] ~= '1' and top - after > limit) then return {epoch, top, {}, ms} end
            return {epoch, top, redis.call('XRANGE', KEYS[1], string.format('%d', after + 1) .. '-0', '+', 'COUNT', limit), ms}
            """
}

extension ChannelNaming {
    /// The channel a history append publishes on (same as ``publication(of:to:)``).
    func channel(forPublishing address: BackplaneAddress) -> ByteBuffer {
        switch mode {
        case .channels: channel(for: address)
        case .broadcast: ByteBuffer(string: prefix)
        }
    }

    /// What goes before the frame in the payload: the routing key and a newline in broadcast mode.
    func payloadPrefix(for address: BackplaneAddress) -> ByteBuffer {
        switch mode {
        case .channels: ByteBuffer()
        case .broadcast: ByteBuffer(string: address.routingKey + "\n")
        }
    }
}
