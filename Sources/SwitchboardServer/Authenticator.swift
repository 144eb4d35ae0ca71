public import Foundation
import JWTKit
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
/// public key (PEM), or any key of a JWKS document. `alg: none` is never accepted.
///
/// Claims: `sub` is the user id (the id rules apply); `exp` is required and honoured;
/// `nbf` is honoured when present; an optional `rooms` array limits joins.
public final class JWTAuthenticator: Sendable {
    private let keys: JWTKeyCollection

    private init(keys: JWTKeyCollection) {
        self.keys = keys
    }

    /// The keys to accept; give at least one.
    public enum Key: Sendable {
        /// HS256 with this shared secret.
        case hmacSecret(String)
        /// A PEM public key: RSA (RS256), P-256 (ES256) or Ed25519 (EdDSA).
        case publicKeyPEM(String)
        /// A JWKS document (JSON); tokens pick their key with `kid`.
        case jwks(String)
    }

    /// - Throws: `AuthenticationFailure` naming the key that could not be used (never its content).
    public static func make(keys: [Key]) async throws(AuthenticationFailure) -> JWTAuthenticator {
        guard !keys.isEmpty else { throw AuthenticationFailure(reason: "JWT auth needs a secret, a public key or a JWKS file") }
        let collection = JWTKeyCollection()
        // Keys given without an id get one of ours, so that several can coexist; a token
        // without `kid` is then tried against each (`iteratingKeys`), and the key's own
        // algorithm must match the token's `alg`.
        for (index, key) in keys.enumerated() {
            let kid = JWKIdentifier(string: "switchboard-\(index)")
            switch key {
            case .hmacSecret(let secret):
                guard secret.utf8.count >= 32 else {
                    throw AuthenticationFailure(reason: "the HS256 secret must be at least 32 bytes")
                }
                await collection.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256, kid: kid)
            case .publicKeyPEM(let pem):
                if let rsa = try? Insecure.RSA.PublicKey(pem: pem) {
                    await collection.add(rsa: rsa, digestAlgorithm: .sha256, kid: kid)
                } else if let ecdsa = try? ES256PublicKey(pem: pem) {
                    await collection.add(ecdsa: ecdsa, kid: kid)
                } else if let eddsa = try? EdDSA.PublicKey(pem: pem) {
                    await collection.add(eddsa: eddsa, kid: kid)
                } else {
                    throw AuthenticationFailure(reason: "the public key is not an RSA (2048+ bits), P-256 or Ed25519 PEM public key")
                }
            case .jwks(let json):
                do {
                    try await collection.add(jwksJSON: json)
                } catch {
                    throw AuthenticationFailure(reason: "the JWKS document cannot be used: \(error)")
                }
            }
        }
        return JWTAuthenticator(keys: collection)
    }

    func verify(_ token: String) async -> Result<Identity, AuthenticationFailure> {
        let claims: SwitchboardClaims
        do {
            claims = try await keys.verify(token, as: SwitchboardClaims.self, iteratingKeys: true)
        } catch let error as JWTError {
            return .failure(AuthenticationFailure(reason: "invalid token: \(Self.describe(error))"))
        } catch {
            return .failure(AuthenticationFailure(reason: "invalid token"))
        }
        do {
            let user = try UserID(validating: claims.sub.value)
            return .success(Identity(user: user, rooms: claims.rooms.map(RoomRules.init(claim:)) ?? .unrestricted, expiresAt: claims.exp.value))
        } catch {
            return .failure(AuthenticationFailure(reason: "invalid token: sub is not a valid user id (\(error.explanation))"))
        }
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

/// The claims Switchboard reads from a token.
struct SwitchboardClaims: JWTPayload {
    var sub: SubjectClaim
    var exp: ExpirationClaim
    var nbf: NotBeforeClaim?
    var rooms: [String]?

    func verify(using algorithm: some JWTAlgorithm) async throws {
        try exp.verifyNotExpired()
        try nbf?.verifyNotBefore()
    }
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
