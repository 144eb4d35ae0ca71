public import Foundation
import JWTKit
import Logging

/// Why a JWT configuration (keys, JWKS, policy) cannot be used. Stops the gateway at start.
public struct JWTConfigurationError: Error, CustomStringConvertible {
    /// Safe to print and log: names the key or flag, never key material.
    public var reason: String
    /// The underlying error (a decoding error, an `HTTPSGetError`), for debugging; not logged.
    public var cause: (any Error)?

    public init(_ reason: String, cause: (any Error)? = nil) {
        self.reason = reason
        self.cause = cause
    }

    public var description: String { reason }
}

/// Where to fetch a JWKS document over HTTPS, and how to keep it fresh.
public struct JWKSEndpoint: Sendable {
    public var url: URL
    /// PEM file of the CAs that may sign the server's certificate; nil: the system trust store.
    public var caFile: String?
    /// How often the key set is fetched again.
    public var refreshInterval: Duration
    /// The least time between two fetches caused by tokens with an unknown `kid`: a
    /// stream of junk kids must not turn the gateway into a load generator for the issuer.
    public var unknownKeyRefreshInterval: Duration
    /// For connect, TLS handshake and response together; below the handshake timeout,
    /// because an unknown-kid fetch happens while a client waits.
    public var timeout: Duration
    /// Larger documents are refused (a JWKS is a few kilobytes).
    public var maximumBytes: Int

    public init(
        url: URL,
        caFile: String? = nil,
        refreshInterval: Duration = .seconds(300),
        unknownKeyRefreshInterval: Duration = .seconds(10),
        timeout: Duration = .seconds(5),
        maximumBytes: Int = 1 << 20
    ) {
        self.url = url
        self.caFile = caFile
        self.refreshInterval = refreshInterval
        self.unknownKeyRefreshInterval = unknownKeyRefreshInterval
        self.timeout = timeout
        self.maximumBytes = maximumBytes
    }
}

/// One key with the single algorithm it may verify.
///
/// Each key sits alone in its own `JWTKeyCollection`, built with its algorithm fixed, so
/// jwt-kit has nothing to choose (and nothing to cache) from a token's header.
struct PinnedKey: Sendable {
    /// The JOSE name (`RS256`, `ES256`, `EdDSA`, …) a token's `alg` must equal.
    let algorithm: String
    let collection: JWTKeyCollection
}

/// JWKS documents → pinned keys by `kid`.
enum JWKSDocument {
    /// Algorithms a JWKS key may be pinned to (signatures only: RSA-OAEP is encryption).
    static let signatureAlgorithms: [JWK.Algorithm] = [.rs256, .rs384, .rs512, .ps256, .ps384, .ps512, .es256, .es384, .es512, .eddsa]

    static func algorithm(named name: String) -> JWK.Algorithm? {
        signatureAlgorithms.first { $0.rawValue == name }
    }

    /// Every key of the document, each pinned to its `alg`, or to `defaultAlgorithm` when it has none.
    ///
    /// jwt-kit 5 would otherwise build the verifier of an `alg`-less key from the first
    /// token's header and keep it (`JWKSigner.makeSigner`, before the signature is checked):
    /// one junk token could choose the algorithm for everyone after it.
    ///
    /// - Parameter source: how errors name the document (`--jwks FILE`, a URL).
    static func keys(
        json: some DataProtocol,
        defaultAlgorithm: JWK.Algorithm?,
        source: String
    ) async throws(JWTConfigurationError) -> [String: PinnedKey] {
        let document: JWKS
        do {
            document = try JSONDecoder().decode(JWKS.self, from: Data(json))
        } catch {
            throw JWTConfigurationError("\(source) is not a JWKS document (JSON with a \"keys\" array of RSA, EC or OKP keys)", cause: error)
        }
        var keys: [String: PinnedKey] = [:]
        for (index, listed) in document.keys.enumerated() {
            var jwk = listed
            guard let kid = jwk.keyIdentifier?.string, !kid.isEmpty else {
                throw JWTConfigurationError("\(source): key \(index + 1) has no \"kid\"; tokens choose JWKS keys by kid")
            }
            let named = "\(source): key '\(kid.prefix(64))'"
            guard keys[kid] == nil else { throw JWTConfigurationError("\(named) appears twice") }
            guard let algorithm = jwk.algorithm ?? defaultAlgorithm else {
                throw JWTConfigurationError(
                    "\(named) has no \"alg\", so a token could choose its algorithm; add \"alg\" to the key or give --jwks-default-alg"
                )
            }
            // Issuers publish encryption keys in the same set; they verify nothing, so they are left out.
            if algorithm == .rsaOAEP { continue }
            guard signatureAlgorithms.contains(algorithm) else {
                throw JWTConfigurationError("\(named) has \"alg\": \"\(algorithm.rawValue)\", which is not a signature algorithm")
            }
            jwk.algorithm = algorithm
            let collection = JWTKeyCollection()
            do {
                try await collection.add(jwk: jwk)
                // Asking without an algorithm succeeds only if jwt-kit built the verifier
                // from the key's own `alg`, i.e. the key type and the algorithm fit together.
                _ = try await collection.getKey(for: JWKIdentifier(string: kid))
            } catch {
                throw JWTConfigurationError("\(named) (kty \(jwk.keyType.rawValue)) cannot verify \(algorithm.rawValue)", cause: error)
            }
            keys[kid] = PinnedKey(algorithm: algorithm.rawValue, collection: collection)
        }
        return keys
    }
}

/// A JWKS fetched over HTTPS: fetched at start, again every `refreshInterval`, and on a
/// token with an unknown `kid` (rate-limited). A failed fetch keeps the last good set.
actor RemoteJWKS {
    private let getter: HTTPSGet
    private let endpoint: JWKSEndpoint
    private let defaultAlgorithm: JWK.Algorithm?
    private let logger: Logger
    private var keys: [String: PinnedKey]
    private var lastUnknownKeyRefresh: ContinuousClock.Instant?
    private var inFlight: Task<Void, Never>?
    private var timer: Task<Void, Never>?

    private init(getter: HTTPSGet, endpoint: JWKSEndpoint, defaultAlgorithm: JWK.Algorithm?, logger: Logger, keys: [String: PinnedKey]) {
        self.getter = getter
        self.endpoint = endpoint
        self.defaultAlgorithm = defaultAlgorithm
        self.logger = logger
        self.keys = keys
    }

    deinit {
        timer?.cancel()
    }

    /// Fetches the key set once (a failure stops the start: a gateway without keys would
    /// refuse everyone) and starts the periodic refresh.
    static func start(_ endpoint: JWKSEndpoint, defaultAlgorithm: JWK.Algorithm?, logger: Logger) async throws(JWTConfigurationError) -> RemoteJWKS {
        let getter: HTTPSGet
        do {
            getter = try HTTPSGet(url: endpoint.url, caFile: endpoint.caFile, timeout: endpoint.timeout, maximumBodyBytes: endpoint.maximumBytes)
        } catch {
            throw JWTConfigurationError("--jwks \(endpoint.url.absoluteString): \(error)", cause: error)
        }
        let keys = try await load(getter, defaultAlgorithm: defaultAlgorithm).get()
        let remote = RemoteJWKS(getter: getter, endpoint: endpoint, defaultAlgorithm: defaultAlgorithm, logger: logger, keys: keys)
        logger.info(
            "JWKS fetched",
            metadata: [LoggingKeys.jwksURL: .string(getter.redactedURL), LoggingKeys.jwksKeyIDs: .array(keys.keys.sorted().map { .string($0) })]
        )
        await remote.startTimer()
        return remote
    }

    private func startTimer() {
        let interval = endpoint.refreshInterval
        // Weak: the timer must not keep a key set alive that no authenticator uses any more.
        timer = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                guard let self, !Task.isCancelled else { return }
                await self.refresh(trigger: "interval")
            }
        }
    }

    /// The key for `kid`; an unknown one triggers a refresh unless one ran within `unknownKeyRefreshInterval`.
    func key(for kid: String) async -> PinnedKey? {
        if let key = keys[kid] { return key }
        if let inFlight {
            await inFlight.value
            return keys[kid]
        }
        let now = ContinuousClock.now
        if let last = lastUnknownKeyRefresh, now - last < endpoint.unknownKeyRefreshInterval { return nil }
        lastUnknownKeyRefresh = now
        await refresh(trigger: "unknown_kid")
        return keys[kid]
    }

    /// Every key, for tokens without `kid`.
    var allKeys: [PinnedKey] { Array(keys.values) }

    /// Fetches now; concurrent callers share one fetch.
    func refresh(trigger: String) async {
        if let inFlight {
            await inFlight.value
            return
        }
        let getter = self.getter
        let defaultAlgorithm = self.defaultAlgorithm
        // Isolated to this actor: the result is applied before anyone awaiting the task resumes.
        let task = Task {
            let result = await Self.load(getter, defaultAlgorithm: defaultAlgorithm)
            self.apply(result, trigger: trigger)
            self.inFlight = nil
        }
        inFlight = task
        await task.value
    }

    private func apply(_ result: Result<[String: PinnedKey], JWTConfigurationError>, trigger: String) {
        let url = Logger.MetadataValue.string(getter.redactedURL)
        switch result {
        case .success(let fresh):
            let changed = Set(fresh.keys) != Set(keys.keys)
            keys = fresh
            logger.log(
                level: changed ? .info : .debug,
                "JWKS refreshed",
                metadata: [
                    LoggingKeys.jwksURL: url, LoggingKeys.jwksTrigger: .string(trigger),
                    LoggingKeys.jwksKeyIDs: .array(fresh.keys.sorted().map { .string($0) }),
                ]
            )
        case .failure(let error):
            // Only our own reason: it names the check that failed, never a key or the body.
            logger.warning(
                "JWKS refresh failed; keeping the last good key set",
                metadata: [
                    LoggingKeys.jwksURL: url, LoggingKeys.jwksTrigger: .string(trigger),
                    LoggingKeys.jwksError: .string(error.reason), LoggingKeys.jwksKept: .stringConvertible(keys.count),
                ]
            )
        }
    }

    private static func load(_ getter: HTTPSGet, defaultAlgorithm: JWK.Algorithm?) async -> Result<[String: PinnedKey], JWTConfigurationError> {
        let source = "--jwks \(getter.redactedURL)"
        let body: [UInt8]
        do {
            body = try await getter.fetch()
        } catch {
            return .failure(JWTConfigurationError("\(source): \(error)", cause: error))
        }
        do {
            let keys = try await JWKSDocument.keys(json: body, defaultAlgorithm: defaultAlgorithm, source: source)
            guard !keys.isEmpty else { return .failure(JWTConfigurationError("\(source) has no signature keys")) }
            return .success(keys)
        } catch {
            return .failure(error)
        }
    }
}
