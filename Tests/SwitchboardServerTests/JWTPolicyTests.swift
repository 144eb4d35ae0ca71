import Foundation
import JWTKit
import SwitchboardServer
import SwitchboardTesting
import Testing

@Suite("JWT authentication policy: audience, issuer, leeway", .serialized, .timeLimit(.minutes(1)))
struct JWTAuthenticationPolicyTests {
    static func token(
        _ user: String,
        aud: [String]? = nil,
        iss: String? = nil,
        expiresIn: TimeInterval = 600,
        notBefore: Date? = nil
    ) async throws -> String {
        var claims = Tokens.claims(user, expiresIn: expiresIn, notBefore: notBefore)
        claims.aud = aud.map { AudienceClaim(value: $0) }
        claims.iss = iss.map { IssuerClaim(value: $0) }
        return try await Tokens.hs256(claims)
    }

    @Test("with audiences and issuers set, aud (a string or an array) must name one and iss must be one; otherwise 401")
    func audienceAndIssuer() async throws {
        let issuer = "https://id.example"
        // A one-element aud is encoded as a string, several as an array (RFC 7519 4.1.3).
        let accepted = [
            ("single", try await Self.token("single", aud: ["switchboard"], iss: issuer)),
            ("array", try await Self.token("array", aud: ["billing", "chat"], iss: issuer)),
        ]
        let refused = [
            ("another audience", try await Self.token("a", aud: ["billing"], iss: issuer)),
            ("other audiences", try await Self.token("b", aud: ["billing", "mail"], iss: issuer)),
            ("no aud", try await Self.token("c", iss: issuer)),
            ("a case variant", try await Self.token("d", aud: ["Switchboard"], iss: issuer)),
            ("another issuer", try await Self.token("e", aud: ["switchboard"], iss: "https://evil.example")),
            ("no iss", try await Self.token("f", aud: ["switchboard"])),
        ]
        let logs = CapturedLogs()
        try await withJWTGateway(policy: .init(audiences: ["switchboard", "chat"], issuers: [issuer]), logs: logs) { gateway in
            for (user, token) in accepted { try await expectAccepted(token, as: user, port: gateway.port) }
            for (name, token) in refused {
                #expect(await refusal(port: gateway.port, path: "/ws?token=\(token)") == 401, "\(name)")
            }
        }
        #expect(logs.all.contains { $0.contains("aud does not name this gateway") })
        #expect(logs.all.contains { $0.contains("iss is not a trusted issuer") })

        // Without a policy, aud and iss are not checked (as before).
        try await withJWTGateway { gateway in
            try await expectAccepted(try await Self.token("any", aud: ["billing"], iss: "https://evil.example"), as: "any", port: gateway.port)
        }
    }

    @Test("--jwt-leeway: exp and nbf within the leeway pass, beyond it 401; without leeway the same tokens get 401")
    func leeway() async throws {
        let justExpired = try await Self.token("late", expiresIn: -10)
        let longExpired = try await Self.token("later", expiresIn: -60)
        let almostValid = try await Self.token("early", notBefore: Date().addingTimeInterval(10))
        let notYetValid = try await Self.token("earlier", notBefore: Date().addingTimeInterval(60))
        try await withJWTGateway(policy: .init(leeway: .seconds(30))) { gateway in
            try await expectAccepted(justExpired, as: "late", port: gateway.port)
            try await expectAccepted(almostValid, as: "early", port: gateway.port)
            #expect(await refusal(port: gateway.port, path: "/ws?token=\(longExpired)") == 401)
            #expect(await refusal(port: gateway.port, path: "/ws?token=\(notYetValid)") == 401)
        }
        try await withJWTGateway { gateway in
            #expect(await refusal(port: gateway.port, path: "/ws?token=\(justExpired)") == 401)
            #expect(await refusal(port: gateway.port, path: "/ws?token=\(almostValid)") == 401)
        }
        for leeway in [Duration.seconds(301), .seconds(-1)] {
            await #expect(throws: JWTConfigurationError.self) {
                _ = try await JWTAuthenticator.make(keys: [.hmacSecret(Tokens.secret)], policy: .init(leeway: leeway))
            }
        }
    }
}
