public import Logging
public import NIOCore
import NIOPosix
public import RedisClient
import ServiceLifecycle
public import SwitchboardBackplane
public import SwitchboardProtocol
import Synchronization

/// Presence in Redis, shared by every gateway that points at the same server (with any backplane).
///
/// Four keys per room, with the room's routing key as hash tag (one Redis Cluster slot per room):
/// - `<prefix>:pc:{room.x}`: a hash, `<gateway id>\n<user>` → that gateway's connection count
///   (a gateway id has no newline, a user id no control character);
/// - `<prefix>:pe:{room.x}`: a sorted set of the same fields, scored by their expiry (ms);
/// - `<prefix>:pu:{room.x}`: a hash, user → connections summed over gateways;
/// - `<prefix>:pl:{room.x}`: a sorted set of users whose last connection went, scored by the
///   end of their grace.
///
/// One Lua script per sync applies a gateway's counts, renews their expiry, and expires
/// overdue entries and graces, returning the `joined` / `leaving` / `left` transitions it
/// decided: a script runs atomically, so each transition goes to one gateway only. Times are
/// Redis's (`TIME`): gateways' clocks may differ. All four keys expire `2 × ttl + grace`
/// after the room's last sync, so a room every gateway left leaves nothing behind.
public final class RedisPresence: PresenceStore {
    public let policy: PresencePolicy
    private let connection: RedisConnection
    private let prefix: String
    private final class Digests: Sendable {
        let value = Mutex<(sync: String, read: String)?>(nil)
    }
    private let scripts = Digests()

    public init(
        configuration: RedisConfiguration,
        prefix: String = "switchboard",
        policy: PresencePolicy,
        gatewayID: String,
        eventLoop: (any EventLoop)? = nil,
        logger: Logger
    ) {
        self.policy = policy
        self.prefix = prefix
        var logger = logger
        logger[metadataKey: LoggingKeys.gatewayID] = .string(gatewayID)
        let scripts = self.scripts
        connection = RedisConnection(
            configuration: configuration,
            name: "\(gatewayID)-presence",
            eventLoop: eventLoop ?? MultiThreadedEventLoopGroup.singleton.next(),
            logger: logger,
            setUp: { setUp in
                // Loaded on every connect: a restarted Redis has no scripts.
                setUp.loadScripts([PresenceScripts.sync, PresenceScripts.read]).map { digests in
                    scripts.value.withLock { $0 = (digests[0], digests[1]) }
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

    public func sync(
        _ room: RoomID,
        gateway: String,
        entries: [PresenceEntry],
        completion: @escaping @Sendable (Result<PresenceChanges, PresenceError>) -> Void
    ) {
        let ttl = policy.ttl.wholeMilliseconds
        let grace = policy.grace.wholeMilliseconds
        var arguments: [ByteBuffer] = [
            ByteBuffer(string: gateway),
            ByteBuffer(string: String(max(1, ttl))),
            ByteBuffer(string: String(max(0, grace))),
            ByteBuffer(string: String(max(1, 2 * ttl + grace))),
        ]
        arguments.reserveCapacity(4 + 2 * entries.count)
        for entry in entries {
            arguments.append(ByteBuffer(string: entry.user.rawValue))
            arguments.append(ByteBuffer(string: String(max(0, entry.connections))))
        }
        evaluate(\.sync, script: PresenceScripts.sync, room: room, arguments: arguments) { result in
            switch result {
            case .success(.array(let values)) where values.count == 4:
                guard let joined = Self.users(values[0]), let leaving = Self.users(values[1]), let left = Self.users(values[2]),
                    case .integer(let count) = values[3]
                else {
                    return completion(.failure(PresenceError("the presence sync script answered \(values)")))
                }
                completion(.success(PresenceChanges(joined: joined, leaving: leaving, left: left, users: Int(count))))
            case .success(let other):
                completion(.failure(PresenceError("the presence sync script answered \(other)")))
            case .failure(let error):
                completion(.failure(PresenceError("Redis did not take the presence update", cause: error)))
            }
        }
    }

    public func read(_ room: RoomID, limit: Int, completion: @escaping @Sendable (Result<PresenceSnapshot, PresenceError>) -> Void) {
        evaluate(\.read, script: PresenceScripts.read, room: room, arguments: [ByteBuffer(string: String(max(0, limit)))]) { result in
            switch result {
            case .success(.array(let values)) where values.count == 2:
                guard case .array(let flat) = values[0], flat.count % 2 == 0, case .integer(let count) = values[1] else {
                    return completion(.failure(PresenceError("the presence read script answered \(values)")))
                }
                var users: [PresenceEntry] = []
                users.reserveCapacity(flat.count / 2)
                var index = 0
                while index + 1 < flat.count {
                    defer { index += 2 }
                    guard let text = flat[index].string, let user = try? UserID(validating: text), case .integer(let connections) = flat[index + 1]
                    else { continue }
                    users.append(PresenceEntry(user: user, connections: Int(connections)))
                }
                users.sort(by: PresenceEntry.precedesByID)
                completion(.success(PresenceSnapshot(users: users, count: Int(count))))
            case .success(let other):
                completion(.failure(PresenceError("the presence read script answered \(other)")))
            case .failure(let error):
                completion(.failure(PresenceError("Redis did not answer the presence read", cause: error)))
            }
        }
    }

    /// An array of user ids from a script (ids Redis holds were validated when written).
    private static func users(_ value: RedisValue) -> [UserID]? {
        guard case .array(let items) = value else { return nil }
        return items.compactMap { $0.string.flatMap { try? UserID(validating: $0) } }
    }

    /// Runs a loaded script by digest (its text after a `SCRIPT FLUSH`).
    private func evaluate(
        _ digest: KeyPath<(sync: String, read: String), String>,
        script: String,
        room: RoomID,
        arguments: [ByteBuffer],
        completion: @escaping @Sendable (Result<RedisValue, RedisError>) -> Void
    ) {
        let tag = "{\(BackplaneAddress.room(room).routingKey)}"
        let keys = ["pc", "pe", "pu", "pl"].map { ByteBuffer(string: "\(prefix):\($0):\(tag)") }
        let sha = scripts.value.withLock { $0?[keyPath: digest] }
        connection.evaluate(script: script, sha: sha, keys: keys, arguments: arguments, completion: completion)
    }
}

/// The two scripts: ``PresenceRoom``'s rules in Lua. KEYS: connections, expiries, users, leaving.
/// Times are formatted with `%d`: Lua's default would write a large one as `1.7e+12`.
enum PresenceScripts {
    private static let now = """
        local clock = redis.call('TIME')
        local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

        """

    /// ARGV: gateway, ttl ms, grace ms, key ttl ms, then user and count pairs (0: gone).
    /// Returns {joined, leaving, left, users present}.
    static let sync =
        now + """
            local left = {}
            for _, field in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', string.format('%d', now))) do
              local count = tonumber(redis.call('HGET', KEYS[1], field) or '0')
              redis.call('HDEL', KEYS[1], field)
              redis.call('ZREM', KEYS[2], field)
              local user = string.sub(field, string.find(field, '\\n', 1, true) + 1)
              local total = redis.call('HGET', KEYS[3], user)
              if total then
                total = tonumber(total) - count
                if total > 0 then
                  redis.call('HSET', KEYS[3], user, total)
                else
                  redis.call('HDEL', KEYS[3], user)
                  table.insert(left, user)
                end
              end
            end
            for _, user in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', string.format('%d', now))) do
              redis.call('ZREM', KEYS[4], user)
              table.insert(left, user)
            end
            local gone = {}
            for _, user in ipairs(left) do gone[user] = true end
            local joined, leaving = {}, {}
            local ttl, grace = tonumber(ARGV[2]), tonumber(ARGV[3])
            for i = 5, #ARGV, 2 do
              local user, after = ARGV[i], tonumber(ARGV[i + 1])
              local field = ARGV[1] .. '\\n' .. user
              local before = tonumber(redis.call('HGET', KEYS[1], field) or '0')
              if after > 0 then
                -- A refresh of an unchanged entry only renews its expiry.
                if after ~= before then redis.call('HSET', KEYS[1], field, after) end
                redis.call('ZADD', KEYS[2], string.format('%d', now + ttl), field)
              else
                redis.call('HDEL', KEYS[1], field)
                redis.call('ZREM', KEYS[2], field)
              end
              if after ~= before then
                local had = redis.call('HGET', KEYS[3], user)
                local total = tonumber(had or '0') + after - before
                if total > 0 then
                  if not had and redis.call('ZREM', KEYS[4], user) == 0 then
                    -- Gone and back in this one sync: to the room, nothing happened.
                    if gone[user] then gone[user] = 'back' else table.insert(joined, user) end
                  end
                  redis.call('HSET', KEYS[3], user, total)
                elseif had then
                  redis.call('HDEL', KEYS[3], user)
                  redis.call('ZADD', KEYS[4], string.format('%d', now + grace), user)
                  table.insert(leaving, user)
                end
              end
            end
            local announced = {}
            for _, user in ipairs(left) do
              if gone[user] ~= 'back' then table.insert(announced, user) end
            end
            for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
            return {joined, leaving, announced, redis.call('HLEN', KEYS[3]) + redis.call('ZCARD', KEYS[4])}
            """

    /// ARGV: limit. Returns {user and count pairs (at most limit), users present}; writes
    /// nothing: expired entries are left out here and removed (and announced) by the next sync.
    static let read =
        now + """
            local gone = {}
            for _, field in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', string.format('%d', now))) do
              local user = string.sub(field, string.find(field, '\\n', 1, true) + 1)
              gone[user] = (gone[user] or 0) + tonumber(redis.call('HGET', KEYS[1], field) or '0')
            end
            local limit, count, list = tonumber(ARGV[1]), 0, {}
            local all = redis.call('HGETALL', KEYS[3])
            for i = 1, #all, 2 do
              local connections = tonumber(all[i + 1]) - (gone[all[i]] or 0)
              if connections > 0 then
                count = count + 1
                if count <= limit then
                  table.insert(list, all[i])
                  table.insert(list, connections)
                end
              end
            end
            for _, user in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. string.format('%d', now), '+inf')) do
              count = count + 1
              if count <= limit then
                table.insert(list, user)
                table.insert(list, 0)
              end
            end
            return {list, count}
            """
}
