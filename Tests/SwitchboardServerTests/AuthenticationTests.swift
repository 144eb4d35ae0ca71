import Foundation
import JWTKit
import Logging
import NIOCore
import SwitchboardClient
import SwitchboardProtocol
import SwitchboardServer
import SwitchboardTesting
import Testing

/// Claims as a token issuer would write them (the gateway reads `sub`, `exp`, `nbf`, `rooms`, `aud`, `iss`).
struct IssuedClaims: JWTPayload {
    var sub: SubjectClaim
    var exp: ExpirationClaim?
    var nbf: NotBeforeClaim?
    var rooms: [String]?
    var aud: AudienceClaim?
    var iss: IssuerClaim?

    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

enum Tokens {
    static let secret = "an-hs256-secret-of-at-least-32-bytes!"

    static func hs256(_ claims: IssuedClaims, secret: String = Tokens.secret) async throws -> String {
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        return try await keys.sign(claims)
    }

    static func claims(_ user: String, expiresIn: TimeInterval = 600, rooms: [String]? = nil, notBefore: Date? = nil) -> IssuedClaims {
        IssuedClaims(
            sub: SubjectClaim(value: user),
            exp: ExpirationClaim(value: Date().addingTimeInterval(expiresIn)),
            nbf: notBefore.map { NotBeforeClaim(value: $0) },
            rooms: rooms
        )
    }
}

/// A gateway with `--auth jwt`.
func withJWTGateway(
    keys: [JWTAuthenticator.Key] = [.hmacSecret(Tokens.secret)],
    policy: JWTAuthenticator.Policy = .init(),
    logs: CapturedLogs? = nil,
    configure: @escaping (inout GatewayConfiguration) -> Void = { _ in },
    _ body: @Sendable (RunningGateway) async throws -> Void
) async throws {
    let logger = logs?.logger(label: "test.jwt") ?? Logger(label: "test.jwt")
    let authenticator = try await JWTAuthenticator.make(keys: keys, policy: policy, logger: logger)
    try await withGateway(
        logs: logs,
        configure: { configuration in
            configuration.auth = .jwt(authenticator)
            configure(&configuration)
        },
        body
    )
}

func refusal(port: Int, path: String, headers: [(String, String)] = []) async -> Int? {
    do {
        let connection = try await WebSocketConnection.connect(host: "127.0.0.1", port: port, path: path, headers: headers)
        await connection.abort()
        return nil
    } catch let HandshakeError.refused(status, _) {
        return status
    } catch {
        return -1
    }
}

@Suite("JWT identity and room authorization", .serialized, .timeLimit(.minutes(1)))
struct AuthenticationTests {
    @Test("a valid HS256 token in Authorization: Bearer or ?token= names the user")
    func validTokens() async throws {
        try await withJWTGateway { gateway in
            let token = try await Tokens.hs256(Tokens.claims("alice"))
            let byHeader = try await TestClient.connect(port: gateway.port, path: "/ws", headers: [("Authorization", "Bearer \(token)")])
            #expect(try await byHeader.next()["user"] == "alice")
            let byQuery = try await TestClient.connect(port: gateway.port, path: "/ws?token=\(token)")
            #expect(try await byQuery.next()["user"] == "alice")
            await byHeader.close()
            await byQuery.close()
        }
    }

    @Test("every bad identity is a 401 without a WebSocket, and no log line contains the token")
    func badIdentities() async throws {
        let logs = CapturedLogs()
        let otherKey = "another-secret-that-is-also-32-bytes-long"
        let expired = try await Tokens.hs256(Tokens.claims("alice", expiresIn: -60))
        let notYet = try await Tokens.hs256(Tokens.claims("alice", notBefore: Date().addingTimeInterval(3600)))
        let foreign = try await Tokens.hs256(Tokens.claims("alice"), secret: otherKey)
        let noExpiry = try await Tokens.hs256(IssuedClaims(sub: "alice"))
        let badSubject = try await Tokens.hs256(Tokens.claims("a\u{1}b"))
        // alg none: a header and payload with an empty signature.
        let header = Data(#"{"alg":"none","typ":"JWT"}"#.utf8).base64URL
        let payload = Data(#"{"sub":"alice","exp":\#(Int(Date().timeIntervalSince1970) + 600)}"#.utf8).base64URL
        let unsigned = "\(header).\(payload)."
        let tampered = try await Tokens.hs256(Tokens.claims("alice")).replacingOccurrences(of: ".", with: ".x", options: [], range: nil)

        try await withJWTGateway(logs: logs) { gateway in
            #expect(await refusal(port: gateway.port, path: "/ws?user=alice") == 401, "a forged ?user= is no identity under jwt")
            for token in [expired, notYet, foreign, noExpiry, badSubject, unsigned, tampered, "garbage"] {
                #expect(await refusal(port: gateway.port, path: "/ws?token=\(token)") == 401, "\(token.prefix(20))…")
                #expect(await refusal(port: gateway.port, path: "/ws", headers: [("Authorization", "Bearer \(token)")]) == 401)
            }
            #expect(gateway.gateway.localCounts.connections == 0)
        }
        let lines = logs.all
        #expect(lines.contains { $0.contains("handshake refused") })
        for token in [expired, notYet, foreign, unsigned, noExpiry] {
            let signature = String(token.split(separator: ".").last ?? "")
            #expect(!lines.contains { $0.contains(token) }, "a log line contains a token")
            if !signature.isEmpty { #expect(!lines.contains { $0.contains(signature) }) }
        }
    }

    @Test("the rooms claim allows exact names and prefix patterns, and forbids the rest")
    func roomsClaim() async throws {
        try await withJWTGateway { gateway in
            let token = try await Tokens.hs256(Tokens.claims("alice", rooms: ["lobby", "team-42:*"]))
            let alice = try await TestClient.connect(port: gateway.port, path: "/ws?token=\(token)")
            _ = try await alice.next()
            for (room, allowed) in [
                ("lobby", true), ("team-42:general", true), ("team-42:", true), ("lobby2", false), ("team-43:general", false), ("LOBBY", false),
            ] {
                try await alice.send(#"{"type":"join","room":"\#(room)","id":"j"}"#)
                let reply = try await alice.next()
                #expect(reply["type"] == (allowed ? "ack" : "error"), "\(room)")
                if !allowed { #expect(reply["code"] == "forbidden") }
            }
            // Not in a room: cannot read it by publishing either.
            try await alice.send(#"{"type":"publish","room":"team-43:general","data":1}"#)
            #expect(try await alice.next()["code"] == "not_member")
            await alice.close()
        }
    }

    @Test("ES256, EdDSA and RS256 public keys, and a JWKS document, verify their tokens; another key's do not")
    func publicKeys() async throws {
        let ecdsa = ES256PrivateKey()
        let eddsa = try EdDSA.PrivateKey(curve: .ed25519)
        let rsaPEM = try Self.openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        let rsa = try Insecure.RSA.PrivateKey(pem: rsaPEM)
        let jwksKey = ES256PrivateKey()
        let parameters = try #require(jwksKey.publicKey.parameters)
        let jwks = #"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","use":"sig","alg":"ES256","x":"\#(parameters.x)","y":"\#(parameters.y)"}]}"#

        let es256Signer = JWTKeyCollection()
        await es256Signer.add(ecdsa: ecdsa)
        let eddsaSigner = JWTKeyCollection()
        await eddsaSigner.add(eddsa: eddsa)
        let rs256Signer = JWTKeyCollection()
        await rs256Signer.add(rsa: rsa, digestAlgorithm: .sha256)
        let jwksSigner = JWTKeyCollection()
        await jwksSigner.add(ecdsa: jwksKey, kid: "k1")
        let strangerSigner = JWTKeyCollection()
        await strangerSigner.add(ecdsa: ES256PrivateKey())
        let tokens = [
            ("es256", try await es256Signer.sign(Tokens.claims("es256"))),
            ("eddsa", try await eddsaSigner.sign(Tokens.claims("eddsa"))),
            ("rs256", try await rs256Signer.sign(Tokens.claims("rs256"))),
            ("jwks", try await jwksSigner.sign(Tokens.claims("jwks"), kid: "k1")),
        ]
        let strangerToken = try await strangerSigner.sign(Tokens.claims("mallory"))

        try await withJWTGateway(keys: [
            .publicKeyPEM(ecdsa.publicKey.pemRepresentation),
            .publicKeyPEM(eddsa.publicKey.pemRepresentation),
            .publicKeyPEM(rsa.publicKey.pemRepresentation),
            .jwks(jwks),
        ]) { gateway in
            for (name, token) in tokens {
                let client = try await TestClient.connect(port: gateway.port, path: "/ws?token=\(token)")
                #expect(try await client.next()["user"] == name)
                await client.close()
            }
            #expect(await refusal(port: gateway.port, path: "/ws?token=\(strangerToken)") == 401)
        }
    }

    @Test("a connection is closed with 1008 when its token expires")
    func expiryClosesConnection() async throws {
        try await withJWTGateway { gateway in
            let token = try await Tokens.hs256(Tokens.claims("alice", expiresIn: 1.5))
            let alice = try await TestClient.connect(port: gateway.port, path: "/ws?token=\(token)")
            _ = try await alice.next()
            try await alice.expectAlive()
            #expect(try await alice.nextCloseCode(timeout: .seconds(5)) == 1008)
        }
    }

    @Test("--allowed-origin: a listed Origin passes, another gets 403, none (not a browser) passes")
    func origins() async throws {
        try await withGateway(configure: { $0.allowedOrigins = ["https://chat.example"] }) { gateway in
            let good = try await TestClient.connect(port: gateway.port, path: "/ws?user=a", headers: [("Origin", "https://chat.example")])
            _ = try await good.next()
            #expect(await refusal(port: gateway.port, path: "/ws?user=b", headers: [("Origin", "https://evil.example")]) == 403)
            let noOrigin = try await TestClient.connect(port: gateway.port, path: "/ws?user=c")
            #expect(try await noOrigin.next()["type"] == "welcome")
            await good.close()
            await noOrigin.close()
        }
    }

    static func openssl(_ arguments: [String]) throws -> String {
        let result = try runProcess("/usr/bin/openssl", arguments)
        guard result.status == 0 else { throw TestFailure("openssl \(arguments) failed: \(result.output)") }
        return result.output
    }
}

extension Data {
    var base64URL: String {
        base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(
            of: "=",
            with: ""
        )
    }
}
