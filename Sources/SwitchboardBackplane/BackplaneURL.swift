/// A `--backplane` value, parsed as far as is neutral: which kind of backplane it names.
///
/// This target knows no concrete backplane, so the parse stops at the scheme; the
/// executable maps each ``Kind`` to its type and hands it ``url`` to parse in full
/// (`AMQPConfiguration`, `RedisBackplaneConfiguration`), reporting what those refuse
/// with ``BackplaneURLError/invalid(_:reason:)``. Credentials in the URL never reach an
/// error's text: every message shows the URL through ``CredentialRedaction``.
public struct BackplaneURL: Sendable, Equatable {
    /// The backplane a URL's scheme names.
    public enum Kind: Sendable, Equatable {
        /// `memory` or `memory://`: ``InMemoryBackplane``, one gateway.
        case memory
        /// `amqp://` or `amqps://` (TLS): RabbitMQ.
        case rabbitMQ
        /// `redis://`, `rediss://` (TLS), or `redis+sentinel://` / `rediss+sentinel://` (a
        /// Sentinel-managed master): Redis Pub/Sub.
        case redis
    }

    /// Which backplane the URL names.
    public let kind: Kind
    /// The URL as given (credentials included: redact it before logging).
    public let url: String
    /// The URLs of a comma-separated list (the nodes of a RabbitMQ cluster); one URL
    /// otherwise. A comma inside a password stays with its URL, but percent-encode it (%2C).
    public let urls: [String]

    /// Parses `value` (the `--backplane` option).
    /// - Throws: ``BackplaneURLError`` when the scheme names no backplane, or the user or
    ///   password holds a raw `/`, `?` or `#` (which no parser would read as meant).
    public init(parsing value: String) throws(BackplaneURLError) {
        guard let kind = Self.kind(of: value) else {
            let scheme = value.split(separator: ":", maxSplits: 1).first.map(String.init) ?? value
            throw .unsupportedScheme(value, scheme: scheme)
        }
        let urls = kind == .memory ? [value] : CredentialRedaction.urls(in: value).map { String($0.drop { $0 == " " }) }
        if urls.count > 1 {
            guard kind == .rabbitMQ, urls.allSatisfy({ Self.kind(of: $0) == .rabbitMQ }) else {
                throw .invalid(value, reason: "a list of several URLs is for the nodes of a RabbitMQ cluster: every one amqp:// or amqps://")
            }
        }
        for one in urls where kind != .memory {
            if let problem = CredentialRedaction.reservedCharacterProblem(in: one) { throw .invalid(value, reason: problem) }
        }
        self.kind = kind
        self.url = value
        self.urls = urls
    }

    /// The kind `value`'s scheme names, without checking the rest; nil for an unknown scheme.
    public static func kind(of value: String) -> Kind? {
        if value == "memory" || value == "memory://" { return .memory }
        if value.hasPrefix("amqp://") || value.hasPrefix("amqps://") { return .rabbitMQ }
        if value.hasPrefix("redis://") || value.hasPrefix("rediss://") || value.hasPrefix("redis+sentinel://")
            || value.hasPrefix("rediss+sentinel://")
        {
            return .redis
        }
        return nil
    }
}

/// A `--backplane` value that names no backplane, or that its backplane cannot read.
public enum BackplaneURLError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The scheme is none of `memory`, `amqp`, `amqps`, `redis`, `rediss`.
    case unsupportedScheme(_ url: String, scheme: String)
    /// The URL names a backplane but cannot be used: `reason` says why (a raw reserved
    /// character in the credentials, or what the backplane's own parser refused).
    case invalid(_ url: String, reason: String)

    /// The message for the operator; the URL's password is redacted.
    public var description: String {
        switch self {
        case .unsupportedScheme(let url, let scheme):
            "unsupported backplane '\(CredentialRedaction.redact(url))' (scheme '\(scheme)'): use 'memory', amqp://, amqps:// or redis://"
        case .invalid(let url, let reason):
            "invalid backplane URL '\(CredentialRedaction.redact(url))': \(reason)"
        }
    }
}
