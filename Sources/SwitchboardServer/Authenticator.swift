public import Foundation
import JWTKit
public import Logging
import NIOHTTP1
public import SwitchboardProtocol

/// How the gateway learns a connection's user id during the WebSocket handshake.
public enum AuthenticationMode: Sendable {
    /// Development only: the user id is taken from `?user=` with no proof.
    case none
    /// A JWT from `Authorization: Bearer …` or `?token=…`, verified with these keys.
    case jwt(JWTAuthenticator)
}

/// Who a connection is, once the handshake proved it.
public struct Identity: Sendable, Equatable {
    public var user: UserID
    /// Which rooms the user may join (the token's `rooms` claim; everything without one).
    public var rooms: RoomRules
    /// When the token expires; the connection is closed then (1008).
    public var expiresAt: Date?

    public init(user: UserID, rooms: RoomRules = .unrestricted, expiresAt: Date? = nil) {
        self.user = user
        self.rooms = rooms
        self.expiresAt = expiresAt
    }
}

/// The rooms a user may join: exact names, and `prefix*` patterns (e.g. `team-42:*`).
///
/// Names and prefixes match by exact UTF-8 bytes, as the broker routes: a claim for
/// "room\u{212A}" (KELVIN SIGN) does not allow "roomK".
public struct RoomRules: Sendable, Equatable {
    private var exact: Set<ExactUTF8>
    private var prefixes: [String]
    private var restricted: Bool

    /// No restriction (no `rooms` claim, or `--auth none`).
    public static let unrestricted = RoomRules(exact: [], prefixes: [], restricted: false)

    private init(exact: Set<ExactUTF8>, prefixes: [String], restricted: Bool) {
        self.exact = exact
        self.prefixes = prefixes
        self.restricted = restricted
    }

    /// Rules from a `rooms` claim: an entry ending in `*` is a prefix, anything else an exact name.
    public init(claim: [String]) {
        var exact: Set<ExactUTF8> = []
        var prefixes: [String] = []
        for entry in claim {
            if entry.utf8.last == UInt8(ascii: "*") {
                prefixes.append(String(decoding: entry.utf8.dropLast(), as: UTF8.self))
            } else {
                exact.insert(ExactUTF8(entry))
            }
        }
        self.init(exact: exact, prefixes: prefixes, restricted: true)
    }

    public func allows(_ room: RoomID) -> Bool {
        guard restricted else { return true }
        return exact.contains(ExactUTF8(room.rawValue)) || prefixes.contains { ExactUTF8.hasPrefix(room.rawValue, $0) }
    }
}

/// Why a handshake was refused; every case is an HTTP 401.
public struct AuthenticationFailure: Error, Sendable, Equatable {
    /// Safe to send to the client and to log: never contains a credential.
    public var reason: String
}

/// Verifies JWTs with jwt-kit: HS256 with a shared secret, RS256/ES256/EdDSA with a
/// public key (PEM), or the keys of a JWKS document (a file, or fetched over HTTPS and
/// refreshed). `alg: none` is never accepted.
///
/// Every key verifies exactly one algorithm, and a token whose header `alg` differs is
/// refused before any signature is checked. Claims: `sub` is the user id (the id rules
/// apply); `exp` is required and honoured; `nbf` is honoured when present, both with the
/// policy's leeway; `aud` and `iss` are checked when the policy names any; an optional
/// `rooms` array limits joins.
public final class JWTAuthenticator: Sendable {
    /// Keys given as a secret or PEM, tried in order for tokens whose `kid` names no JWKS key.
    private let staticKeys: [PinnedKey]
    /// Keys of JWKS files, by `kid`.
    private let documentKeys: [String: PinnedKey]
    private let remoteKeys: [RemoteJWKS]
    private let policy: Policy

    private init(staticKeys: [PinnedKey], documentKeys: [String: PinnedKey], remoteKeys: [RemoteJWKS], policy: Policy) {
        self.staticKeys = staticKeys
        self.documentKeys = documentKeys
        self.remoteKeys = remoteKeys
        self.policy = policy
    }

    /// The keys to accept; give at least one.
    public enum Key: Sendable {
        /// HS256 with this shared secret.
        case hmacSecret(String)
        /// A PEM public key: RSA (RS256), P-256 (ES256) or Ed25519 (EdDSA).
        case publicKeyPEM(String)
        /// A JWKS document (JSON); tokens pick their key with `kid`.
        case jwks(String)
        /// A JWKS document fetched over HTTPS at start and kept fresh; tokens pick their key with `kid`.
        case jwksURL(JWKSEndpoint)
    }

    /// What a validly signed token must also satisfy.
    public struct Policy: Sendable {
        /// Accepted `aud` values; a token must name at least one (as a string or in an
        /// array, RFC 7519 4.1.3). Empty: `aud` is not checked.
        public var audiences: Set<String>
        /// Accepted `iss` values; empty: `iss` is not checked.
        public var issuers: Set<String>
        /// Clock skew allowed on `exp` and `nbf`; at most ``maximumLeeway``.
        public var leeway: Duration
        /// The algorithm of JWKS keys that have no `alg` (e.g. "RS256"); without it such keys are refused.
        public var defaultJWKSAlgorithm: String?

        public static let maximumLeeway: Duration = .seconds(300)

        public init(audiences: Set<String> = [], issuers: Set<String> = [], leeway: Duration = .zero, defaultJWKSAlgorithm: String? = nil) {
            self.audiences = audiences
            self.issuers = issuers
            self.leeway = leeway
            self.defaultJWKSAlgorithm = defaultJWKSAlgorithm
        }
    }

    /// Loads every key (fetching remote JWKS once) and checks the policy.
    /// - Throws: `JWTConfigurationError` naming the key or setting that cannot be used (never key material).
    public static func make(
        keys: [Key],
        policy: Policy = Policy(),
        logger: Logger = Logger(label: "switchboard.jwt")
    ) async throws(JWTConfigurationError) -> JWTAuthenticator {
        guard !keys.isEmpty else { throw JWTConfigurationError("JWT auth needs a secret, a public key or a JWKS") }
        guard policy.leeway >= .zero, policy.leeway <= Policy.maximumLeeway else {
            throw JWTConfigurationError("the JWT leeway must be 0…\(Policy.maximumLeeway.components.seconds) seconds")
        }
        guard !policy.audiences.contains(""), !policy.issuers.contains("") else {
            throw JWTConfigurationError("an empty JWT audience or issuer would match nothing useful; leave it out")
        }
        var defaultAlgorithm: JWK.Algorithm?
        if let name = policy.defaultJWKSAlgorithm {
            guard let algorithm = JWKSDocument.algorithm(named: name) else {
                throw JWTConfigurationError(
                    "--jwks-default-alg \(name.prefix(16)) is not one of \(JWKSDocument.signatureAlgorithms.map(\.rawValue).joined(separator: ", "))"
                )
            }
            defaultAlgorithm = algorithm
        }
        var staticKeys: [PinnedKey] = []
        var documentKeys: [String: PinnedKey] = [:]
        var remoteKeys: [RemoteJWKS] = []
        for key in keys {
            switch key {
            case .hmacSecret(let secret):
                guard secret.utf8.count >= 32 else {
                    throw JWTConfigurationError("the HS256 secret must be at least 32 bytes")
                }
                let collection = JWTKeyCollection()
                await collection.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
                staticKeys.append(PinnedKey(algorithm: "HS256", collection: collection))
            case .publicKeyPEM(let pem):
                let collection = JWTKeyCollection()
                let algorithm: String
                if let rsa = try? Insecure.RSA.PublicKey(pem: pem) {
                    await collection.add(rsa: rsa, digestAlgorithm: .sha256)
                    algorithm = "RS256"
                } else if let ecdsa = try? ES256PublicKey(pem: pem) {
                    await collection.add(ecdsa: ecdsa)
                    algorithm = "ES256"
                } else if let eddsa = try? EdDSA.PublicKey(pem: pem) {
                    await collection.add(eddsa: eddsa)
                    algorithm = "EdDSA"
                } else {
                    throw JWTConfigurationError("the public key is not an RSA (2048+ bits), P-256 or Ed25519 PEM public key")
                }
                staticKeys.append(PinnedKey(algorithm: algorithm, collection: collection))
            case .jwks(let json):
                let loaded = try await JWKSDocument.keys(json: Array(json.utf8), defaultAlgorithm: defaultAlgorithm, source: "the JWKS document")
                guard !loaded.isEmpty else { throw JWTConfigurationError("the JWKS document has no signature keys") }
                for (kid, key) in loaded {
                    guard documentKeys.updateValue(key, forKey: kid) == nil else {
                        throw JWTConfigurationError("JWKS key '\(kid.prefix(64))' appears in two documents")
                    }
                }
            case .jwksURL(let endpoint):
                remoteKeys.append(try await RemoteJWKS.start(endpoint, defaultAlgorithm: defaultAlgorithm, logger: logger))
            }
        }
        return JWTAuthenticator(staticKeys: staticKeys, documentKeys: documentKeys, remoteKeys: remoteKeys, policy: policy)
    }

    func verify(_ token: String) async -> Result<Identity, AuthenticationFailure> {
        guard let header = TokenHeader(token) else {
            return .failure(AuthenticationFailure(reason: "invalid token: malformed token"))
        }
        guard let algorithm = header.alg, algorithm != "none" else {
            return .failure(AuthenticationFailure(reason: "invalid token: no signature algorithm"))
        }
        let candidates: [PinnedKey]
        switch await lookUpKeys(for: header) {
        case .success(let keys): candidates = keys.filter { $0.algorithm == algorithm }
        case .failure(let failure): return .failure(failure)
        }
        // Compared before jwt-kit sees the token: a key verifies its one algorithm only.
        guard !candidates.isEmpty else {
            return .failure(AuthenticationFailure(reason: "invalid token: alg does not match the key's algorithm"))
        }
        var claims: SwitchboardClaims?
        var lastError: (any Error)?
        for key in candidates {
            do {
                claims = try await key.collection.verify(token, as: SwitchboardClaims.self)
                break
            } catch {
                lastError = error
            }
        }
        guard let claims else {
            if let error = lastError as? JWTError {
                return .failure(AuthenticationFailure(reason: "invalid token: \(Self.describe(error))"))
            }
            return .failure(AuthenticationFailure(reason: "invalid token"))
        }
        if let failure = check(claims, now: Date()) { return .failure(failure) }
        do {
            let user = try UserID(validating: claims.sub.value)
            // Within the leeway a token is still valid, so the connection may live that long too.
            let expiresAt = claims.exp.value.addingTimeInterval(policy.leeway.timeInterval)
            return .success(Identity(user: user, rooms: claims.rooms.map(RoomRules.init(claim:)) ?? .unrestricted, expiresAt: expiresAt))
        } catch {
            return .failure(AuthenticationFailure(reason: "invalid token: sub is not a valid user id (\(error.explanation))"))
        }
    }

    /// The keys that may have signed a token with this header, before the `alg` filter.
    private func lookUpKeys(for header: TokenHeader) async -> Result<[PinnedKey], AuthenticationFailure> {
        guard let kid = header.kid else {
            // No kid: any key, as before (jwt-kit's iteratingKeys); the alg filter still applies.
            var all = staticKeys + Array(documentKeys.values)
            for remote in remoteKeys { all += await remote.allKeys }
            return .success(all)
        }
        if let key = documentKeys[kid] { return .success([key]) }
        for remote in remoteKeys {
            if let key = await remote.key(for: kid) { return .success([key]) }
        }
        // A kid that names no JWKS key: issuers often put one in HS256 tokens too.
        guard !staticKeys.isEmpty else { return .failure(AuthenticationFailure(reason: "invalid token: unknown key id")) }
        return .success(staticKeys)
    }

    /// Time, audience and issuer, after the signature verified.
    private func check(_ claims: SwitchboardClaims, now: Date) -> AuthenticationFailure? {
        let leeway = policy.leeway.timeInterval
        guard now < claims.exp.value.addingTimeInterval(leeway) else {
            return AuthenticationFailure(reason: "invalid token: exp: expired")
        }
        if let nbf = claims.nbf, now < nbf.value.addingTimeInterval(-leeway) {
            return AuthenticationFailure(reason: "invalid token: nbf: not valid yet")
        }
        if !policy.audiences.isEmpty {
            // By exact bytes, like ids: `Set<String>.contains` follows canonical equivalence.
            guard let audience = claims.aud,
                audience.value.contains(where: { value in policy.audiences.contains { ExactUTF8.equal($0, value) } })
            else {
                return AuthenticationFailure(reason: "invalid token: aud does not name this gateway")
            }
        }
        if !policy.issuers.isEmpty {
            guard let issuer = claims.iss, policy.issuers.contains(where: { ExactUTF8.equal($0, issuer.value) }) else {
                return AuthenticationFailure(reason: "invalid token: iss is not a trusted issuer")
            }
        }
        return nil
    }

    /// A reason that names what failed without quoting the token.
    private static func describe(_ error: JWTError) -> String {
        switch error.errorType {
        case .claimVerificationFailure: error.reason ?? "a claim failed verification"
        case .signatureVerificationFailed: "the signature does not verify"
        case .unknownKID: "unknown key id"
        case .missingKIDHeader: "no key id"
        case .malformedToken: "malformed token"
        default: "\(error.errorType)"
        }
    }
}

/// The `alg` and `kid` of a token's header, read before anything is verified.
struct TokenHeader: Decodable {
    var alg: String?
    var kid: String?

    init?(_ token: String) {
        let parts = token.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard parts.count == 3, let data = Self.base64URLDecode(parts[0]),
            let header = try? JSONDecoder().decode(TokenHeader.self, from: data)
        else { return nil }
        self = header
    }

    private static func base64URLDecode(_ text: Substring.UTF8View) -> Data? {
        var base64 = String(decoding: text, as: UTF8.self).replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.utf8.count % 4) % 4)
        return Data(base64Encoded: base64)
    }
}

extension Duration {
    /// As a `TimeInterval`, for `Date` arithmetic.
    var timeInterval: TimeInterval {
        let (seconds, attoseconds) = components
        return TimeInterval(seconds) + TimeInterval(attoseconds) / 1e18
    }
}

/// The claims Switchboard reads from a token.
struct SwitchboardClaims: JWTPayload {
    var sub: SubjectClaim
    var exp: ExpirationClaim
    var nbf: NotBeforeClaim?
    var aud: AudienceClaim?
    var iss: IssuerClaim?
    var rooms: [String]?

    /// Nothing here: time, audience and issuer need the gateway's policy (leeway, accepted
    /// values), so `JWTAuthenticator.check` does them once the signature is verified.
    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// Turns a handshake request into an identity, or a failure that becomes HTTP 401.
struct Authenticator: Sendable {
    let mode: AuthenticationMode

    /// The credential of a handshake: `Authorization: Bearer` wins over `?token=`.
    static func token(from head: HTTPRequestHead) -> String? {
        if let header = head.headers.first(name: "authorization") {
            let parts = header.split(separator: " ", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "bearer" { return String(parts[1]).trimmingCharacters(in: .whitespaces) }
        }
        return QueryString(uri: head.uri).value(for: "token")
    }

    /// Decides synchronously when it can (no auth), else returns nil and `authenticateAsync` must be used.
    func authenticateImmediately(_ head: HTTPRequestHead) -> Result<Identity, AuthenticationFailure>? {
        switch mode {
        case .none:
            let query = QueryString(uri: head.uri)
            guard let user = query.value(for: "user") else {
                return .failure(AuthenticationFailure(reason: "missing ?user= (the gateway runs with --auth none)"))
            }
            do {
                return .success(Identity(user: try UserID(validating: user)))
            } catch {
                return .failure(AuthenticationFailure(reason: "invalid user id: \(error.explanation)"))
            }
        case .jwt:
            guard Self.token(from: head) != nil else {
                return .failure(AuthenticationFailure(reason: "missing token (Authorization: Bearer or ?token=)"))
            }
            return nil
        }
    }

    func authenticateAsync(_ head: HTTPRequestHead) async -> Result<Identity, AuthenticationFailure> {
        guard case .jwt(let verifier) = mode, let token = Self.token(from: head) else {
            return .failure(AuthenticationFailure(reason: "missing token"))
        }
        return await verifier.verify(token)
    }
}

/// The path and decoded query parameters of a request URI.
struct QueryString {
    let path: Substring
    private let pairs: [(String, String)]

    init(uri: String) {
        let parts = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        path = parts.first ?? ""
        guard parts.count == 2 else {
            pairs = []
            return
        }
        pairs = parts[1].split(separator: "&").map { pair in
            let keyValue = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = Self.percentDecode(keyValue[0])
            let value = keyValue.count > 1 ? Self.percentDecode(keyValue[1]) : ""
            return (key, value)
        }
    }

    func value(for key: String) -> String? {
        pairs.first { $0.0 == key }?.1
    }

    /// Decodes `%XX` and `+`; malformed escapes are kept as written.
    static func percentDecode(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = Array(text.utf8)[...]
        while let byte = iterator.popFirst() {
            if byte == UInt8(ascii: "+") {
                bytes.append(UInt8(ascii: " "))
            } else if byte == UInt8(ascii: "%"), iterator.count >= 2,
                let high = hexValue(iterator[iterator.startIndex]),
                let low = hexValue(iterator[iterator.startIndex + 1])
            {
                bytes.append(high << 4 | low)
                iterator = iterator.dropFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
