import Foundation
import JWTKit
import NIOCore
import NIOPosix
import NIOSSL
import SwitchboardServer
import SwitchboardTesting
import Synchronization
import Testing

/// A throwaway CA and server certificates signed by it, made with openssl in a fresh folder.
struct TestPKI {
    let directory: URL
    let caFile: String

    static func make() throws -> TestPKI {
        let directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("sb-pki-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let ca = directory.appendingPathComponent("ca.pem").path
        try openssl([
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
            "-keyout", directory.appendingPathComponent("ca.key").path, "-out", ca, "-subj", "/CN=Switchboard test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ])
        return TestPKI(directory: directory, caFile: ca)
    }

    /// A server certificate for `subjectAltName` (openssl syntax), signed by this CA.
    func serverCertificate(subjectAltName: String = "DNS:localhost,IP:127.0.0.1") throws -> (certificate: String, key: String) {
        let name = UUID().uuidString
        let key = directory.appendingPathComponent("\(name).key").path
        let request = directory.appendingPathComponent("\(name).csr").path
        let certificate = directory.appendingPathComponent("\(name).pem").path
        let extensions = directory.appendingPathComponent("\(name).ext")
        try "subjectAltName=\(subjectAltName)\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n".write(
            to: extensions,
            atomically: true,
            encoding: .utf8
        )
        try Self.openssl([
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", request, "-subj", "/CN=jwks",
        ])
        try Self.openssl([
            "x509", "-req", "-in", request, "-CA", caFile, "-CAkey", directory.appendingPathComponent("ca.key").path,
            "-CAcreateserial", "-out", certificate, "-days", "1", "-extfile", extensions.path,
        ])
        return (certificate, key)
    }

    func remove() { try? FileManager.default.removeItem(at: directory) }

    private static func openssl(_ arguments: [String]) throws {
        let result = try runProcess("/usr/bin/openssl", arguments)
        guard result.status == 0 else { throw TestFailure("openssl \(arguments.first ?? "") failed: \(result.output)") }
    }

    private func openssl(_ arguments: [String]) throws { try Self.openssl(arguments) }
}

/// An HTTPS server on 127.0.0.1 (NIO + NIOSSL) that answers every request with its current `answer`.
final class JWKSServer: Sendable {
    enum Answer: Sendable {
        case document(String)
        case status(Int)
        /// Reads the request and never answers.
        case stall
    }

    private let state: Mutex<(answer: Answer, requests: Int)>
    private let channel: Mutex<(any Channel)?> = Mutex(nil)

    private init(answer: Answer) {
        state = Mutex((answer, 0))
    }

    var port: Int { channel.withLock { $0?.localAddress?.port ?? 0 } }
    var requests: Int { state.withLock { $0.requests } }
    func answer(_ answer: Answer) { state.withLock { $0.answer = answer } }

    fileprivate func nextAnswer() -> Answer {
        state.withLock { state in
            state.requests += 1
            return state.answer
        }
    }

    static func start(certificate: String, key: String, answer: Answer) async throws -> JWKSServer {
        let server = JWKSServer(answer: answer)
        let context = try NIOSSLContext(
            configuration: .makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            )
        )
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
                    try channel.pipeline.syncOperations.addHandler(RawHTTPResponder(server: server))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        server.channel.withLock { $0 = channel }
        return server
    }

    func stop() async {
        let channel = channel.withLock { $0 }
        try? await channel?.close()
    }

    /// A JWKS document of P-256 keys; `alg` is left out when `withAlgorithm` is false.
    static func document(_ keys: [(kid: String, key: ES256PrivateKey)], withAlgorithm: Bool = true) -> String {
        let entries = keys.map { kid, key in
            let parameters = key.publicKey.parameters!
            let alg = withAlgorithm ? #","alg":"ES256""# : ""
            return #"{"kty":"EC","crv":"P-256","kid":"\#(kid)","use":"sig"\#(alg),"x":"\#(parameters.x)","y":"\#(parameters.y)"}"#
        }
        return #"{"keys":[\#(entries.joined(separator: ","))]}"#
    }
}

/// Reads bytes up to the end of the request head, then writes the server's answer and closes.
/// Runs on its channel's event loop only, like every NIO handler.
private final class RawHTTPResponder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let server: JWKSServer
    private var received: [UInt8] = []
    private var answered = false

    init(server: JWKSServer) { self.server = server }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered else { return }
        received += unwrapInboundIn(data).readableBytesView
        guard String(decoding: received, as: UTF8.self).contains("\r\n\r\n") else { return }
        answered = true
        let (status, body): (Int, String)
        switch server.nextAnswer() {
        case .document(let document): (status, body) = (200, document)
        case .status(let code): (status, body) = (code, "nope")
        case .stall: return
        }
        let response =
            "HTTP/1.1 \(status) X\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: response)), promise: nil)
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Signs ES256 tokens with a `kid`.
func es256Token(_ claims: IssuedClaims, key: ES256PrivateKey, kid: String) async throws -> String {
    let signer = JWTKeyCollection()
    await signer.add(ecdsa: key, kid: JWKIdentifier(string: kid))
    return try await signer.sign(claims, kid: JWKIdentifier(string: kid))
}

func expectAccepted(_ token: String, as user: String, port: Int, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let client = try await TestClient.connect(port: port, path: "/ws?token=\(token)")
    #expect(try await client.next()["user"] == user, sourceLocation: sourceLocation)
    await client.close()
}

@Suite("JWKS over HTTPS: fetched, refreshed, rotated, verified", .serialized, .timeLimit(.minutes(2)))
struct JWKSTests {
    @Test(
        "keys rotate: a token with a new kid is accepted after an unknown-kid refresh; a retired kid is refused; junk kids fetch at most once per 10 s"
    )
    func rotation() async throws {
        let pki = try TestPKI.make()
        defer { pki.remove() }
        let (certificate, key) = try pki.serverCertificate()
        let old = ES256PrivateKey()
        let new = ES256PrivateKey()
        let server = try await JWKSServer.start(certificate: certificate, key: key, answer: .document(JWKSServer.document([("old", old)])))
        defer { Task { await server.stop() } }
        let endpoint = JWKSEndpoint(url: URL(string: "https://127.0.0.1:\(server.port)/.well-known/jwks.json")!, caFile: pki.caFile)
        let oldToken = try await es256Token(Tokens.claims("alice"), key: old, kid: "old")
        let newToken = try await es256Token(Tokens.claims("bob"), key: new, kid: "new")

        try await withJWTGateway(keys: [.jwksURL(endpoint)]) { gateway in
            #expect(server.requests == 1, "fetched once at start")
            try await expectAccepted(oldToken, as: "alice", port: gateway.port)
            server.answer(.document(JWKSServer.document([("new", new)])))
            try await expectAccepted(newToken, as: "bob", port: gateway.port)
            #expect(server.requests == 2, "the unknown kid fetched the rotated set")
            #expect(await refusal(port: gateway.port, path: "/ws?token=\(oldToken)") == 401, "the retired key no longer verifies")
            for index in 0..<5 {
                let junk = try await es256Token(Tokens.claims("mallory"), key: ES256PrivateKey(), kid: "junk-\(index)")
                #expect(await refusal(port: gateway.port, path: "/ws?token=\(junk)") == 401)
            }
            #expect(server.requests == 2, "unknown kids within 10 s of the last such fetch fetch nothing")
        }
    }

    @Test(
        "a failing refresh (HTTP 500, a stall, not JSON, a key without alg, no keys, 2 MiB, no answer on an unknown kid) keeps the last good keys, and is logged without key material"
    )
    func failedRefreshKeepsKeys() async throws {
        let pki = try TestPKI.make()
        defer { pki.remove() }
        let (certificate, key) = try pki.serverCertificate()
        let signing = ES256PrivateKey()
        let good = JWKSServer.document([("k1", signing)])
        let server = try await JWKSServer.start(certificate: certificate, key: key, answer: .document(good))
        defer { Task { await server.stop() } }
        let endpoint = JWKSEndpoint(
            url: URL(string: "https://localhost:\(server.port)/jwks")!,
            caFile: pki.caFile,
            refreshInterval: .milliseconds(200),
            unknownKeyRefreshInterval: .zero,
            timeout: .seconds(1)
        )
        let token = try await es256Token(Tokens.claims("alice"), key: signing, kid: "k1")
        let logs = CapturedLogs()

        try await withJWTGateway(keys: [.jwksURL(endpoint)], logs: logs) { gateway in
            try await expectAccepted(token, as: "alice", port: gateway.port)
            let failures: [JWKSServer.Answer] = [
                .status(500), .stall, .document("not json"), .document(JWKSServer.document([("k1", signing)], withAlgorithm: false)),
                .document(#"{"keys":[]}"#), .document(String(repeating: " ", count: 2 << 20)),
            ]
            for failure in failures {
                server.answer(failure)
                let before = server.requests
                #expect(try await eventually(timeout: .seconds(10)) { server.requests >= before + 2 }, "\(failure)")
                try await expectAccepted(token, as: "alice", port: gateway.port)
            }
            // An unknown kid's refresh fails too: refused, and k1 still works.
            server.answer(.status(503))
            let stranger = try await es256Token(Tokens.claims("mallory"), key: ES256PrivateKey(), kid: "k2")
            #expect(await refusal(port: gateway.port, path: "/ws?token=\(stranger)") == 401)
            try await expectAccepted(token, as: "alice", port: gateway.port)
            // And a good answer again is taken.
            server.answer(.document(good))
        }
        let lines = logs.all
        let failuresLogged = lines.filter { $0.contains("JWKS refresh failed") }
        for reason in [
            "HTTP status 500", "no complete response", "not a JWKS document", "has no \"alg\"", "has no signature keys", "larger than 1048576 bytes",
            "HTTP status 503",
        ] {
            #expect(failuresLogged.contains { $0.contains(reason) }, "\(reason) is logged")
        }
        let parameters = try #require(signing.publicKey.parameters)
        #expect(!lines.contains { $0.contains(parameters.x) || $0.contains(parameters.y) }, "no key material in the logs")
        #expect(!lines.contains { $0.contains(token) || $0.contains(String(token.split(separator: ".").last!)) }, "no token in the logs")
    }

    @Test(
        "the fetch verifies the certificate and the host name: another CA, the system store, a certificate for another name, http:// and an unreachable URL all stop the start"
    )
    func tlsIsVerified() async throws {
        let pki = try TestPKI.make()
        let otherPKI = try TestPKI.make()
        defer {
            pki.remove()
            otherPKI.remove()
        }
        let (certificate, key) = try pki.serverCertificate()
        let (otherName, otherNameKey) = try pki.serverCertificate(subjectAltName: "DNS:jwks.example.com")
        let document = JWKSServer.document([("k1", ES256PrivateKey())])
        let server = try await JWKSServer.start(certificate: certificate, key: key, answer: .document(document))
        let misnamed = try await JWKSServer.start(certificate: otherName, key: otherNameKey, answer: .document(document))
        defer {
            Task {
                await server.stop()
                await misnamed.stop()
            }
        }
        let url = URL(string: "https://127.0.0.1:\(server.port)/jwks")!

        // The positive control: the right CA, by IP address and by name.
        _ = try await JWTAuthenticator.make(keys: [.jwksURL(JWKSEndpoint(url: url, caFile: pki.caFile))])
        _ = try await JWTAuthenticator.make(keys: [
            .jwksURL(JWKSEndpoint(url: URL(string: "https://localhost:\(server.port)/jwks")!, caFile: pki.caFile))
        ])
        #expect(server.requests == 2)

        let refused: [(JWKSEndpoint, String)] = [
            (JWKSEndpoint(url: url, caFile: otherPKI.caFile), "connection failed"),
            (JWKSEndpoint(url: url), "connection failed"),
            (JWKSEndpoint(url: URL(string: "https://127.0.0.1:\(misnamed.port)/jwks")!, caFile: pki.caFile), "connection failed"),
            (JWKSEndpoint(url: URL(string: "http://127.0.0.1:\(server.port)/jwks")!, caFile: pki.caFile), "only https://"),
            (JWKSEndpoint(url: URL(string: "https://127.0.0.1:1/jwks")!, caFile: pki.caFile), "connection failed"),
        ]
        for (endpoint, reason) in refused {
            do {
                _ = try await JWTAuthenticator.make(keys: [.jwksURL(endpoint)])
                Issue.record("\(endpoint.url) with CA \(endpoint.caFile ?? "system") was accepted")
            } catch {
                #expect(error.reason.contains(reason), "\(error.reason)")
                #expect(error.reason.contains("--jwks"), "the error names the flag")
            }
        }
        #expect(server.requests == 2, "no request went to a server whose certificate was refused")
        #expect(misnamed.requests == 0)
    }
}

@Suite("JWKS algorithm pinning", .serialized, .timeLimit(.minutes(1)))
struct JWKSAlgorithmPinningTests {
    /// An RSA key (openssl) and its JWKS entry without `alg`.
    static func rsaKey(kid: String) throws -> (key: Insecure.RSA.PrivateKey, jwks: String) {
        let key = try Insecure.RSA.PrivateKey(
            pem: try AuthenticationTests.openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        )
        let (modulus, exponent) = try key.publicKey.getKeyPrimitives()
        return (key, #"{"keys":[{"kty":"RSA","kid":"\#(kid)","use":"sig","n":"\#(modulus.base64URL)","e":"\#(exponent.base64URL)"}]}"#)
    }

    /// A token for `kid` whose header claims `alg` and whose signature is junk.
    static func junkToken(alg: String, kid: String) -> String {
        let header = Data(#"{"alg":"\#(alg)","kid":"\#(kid)","typ":"JWT"}"#.utf8).base64URL
        let payload = Data(#"{"sub":"mallory","exp":\#(Int(Date().timeIntervalSince1970) + 600)}"#.utf8).base64URL
        return "\(header).\(payload).\(Data(repeating: 0x42, count: 256).base64URL)"
    }

    @Test(
        "tokens claiming another alg (PS512, RS512, ES256, HS256, none) with a junk signature cannot poison the key: a valid RS256 token for the same kid is accepted afterwards"
    )
    func poisoningAttempt() async throws {
        let (key, jwks) = try Self.rsaKey(kid: "r1")
        let signer = JWTKeyCollection()
        await signer.add(rsa: key, digestAlgorithm: .sha256, kid: "r1")
        let valid = try await signer.sign(Tokens.claims("alice"), kid: "r1")
        let logs = CapturedLogs()

        try await withJWTGateway(keys: [.jwks(jwks)], policy: .init(defaultJWKSAlgorithm: "RS256"), logs: logs) { gateway in
            for alg in ["PS512", "RS512", "PS256", "ES256", "HS256", "none"] {
                #expect(await refusal(port: gateway.port, path: "/ws?token=\(Self.junkToken(alg: alg, kid: "r1"))") == 401, "\(alg)")
            }
            try await expectAccepted(valid, as: "alice", port: gateway.port)
            try await expectAccepted(valid, as: "alice", port: gateway.port)
        }
        #expect(logs.all.contains { $0.contains("alg does not match the key's algorithm") })
    }

    @Test("a JWKS key without alg is refused at load, naming its kid, unless --jwks-default-alg says which; an unknown default is refused")
    func keysWithoutAlgorithm() async throws {
        let (_, jwks) = try Self.rsaKey(kid: "rsa-no-alg")
        do {
            _ = try await JWTAuthenticator.make(keys: [.jwks(jwks)])
            Issue.record("a key without alg was accepted")
        } catch {
            #expect(error.reason.contains("'rsa-no-alg'") && error.reason.contains("--jwks-default-alg"), "\(error.reason)")
        }
        do {
            _ = try await JWTAuthenticator.make(keys: [.jwks(jwks)], policy: .init(defaultJWKSAlgorithm: "XS999"))
            Issue.record("an unknown default alg was accepted")
        } catch {
            #expect(error.reason.contains("--jwks-default-alg"), "\(error.reason)")
        }
        do {
            // An RSA key cannot be pinned to an EC algorithm.
            _ = try await JWTAuthenticator.make(keys: [.jwks(jwks)], policy: .init(defaultJWKSAlgorithm: "ES256"))
            Issue.record("an RSA key pinned to ES256 was accepted")
        } catch {
            #expect(error.reason.contains("'rsa-no-alg'") && error.reason.contains("cannot verify ES256"), "\(error.reason)")
        }
        _ = try await JWTAuthenticator.make(keys: [.jwks(jwks)], policy: .init(defaultJWKSAlgorithm: "PS256"))

        // An encryption key (RSA-OAEP) beside the signature keys is left out, not an error; alone it leaves no key.
        let encryption = jwks.replacingOccurrences(of: #""kid":"rsa-no-alg","use":"sig""#, with: #""kid":"enc-1","use":"enc","alg":"RSA-OAEP""#)
        #expect(encryption.contains("RSA-OAEP"))
        let signing = JWKSServer.document([("e1", ES256PrivateKey())])
        let mixed = encryption.replacingOccurrences(of: "]}", with: "," + signing.dropFirst(#"{"keys":["#.count))
        _ = try await JWTAuthenticator.make(keys: [.jwks(mixed)])
        do {
            _ = try await JWTAuthenticator.make(keys: [.jwks(encryption)])
            Issue.record("a JWKS of encryption keys only was accepted")
        } catch {
            #expect(error.reason.contains("no signature keys"), "\(error.reason)")
        }
    }

    @Test("a token whose alg differs from its key's alg gets 401 even when that key's alg is in the document")
    func headerMustMatchPinnedAlgorithm() async throws {
        let key = ES256PrivateKey()
        let document = JWKSServer.document([("e1", key)])
        let good = try await es256Token(Tokens.claims("alice"), key: key, kid: "e1")
        // Same signature, header rewritten to ES384: the key must not even try it.
        let parts = good.split(separator: ".")
        let rewritten = Data(#"{"alg":"ES384","kid":"e1","typ":"JWT"}"#.utf8).base64URL + ".\(parts[1]).\(parts[2])"
        let logs = CapturedLogs()
        try await withJWTGateway(keys: [.jwks(document)], logs: logs) { gateway in
            #expect(await refusal(port: gateway.port, path: "/ws?token=\(rewritten)") == 401)
            try await expectAccepted(good, as: "alice", port: gateway.port)
        }
        #expect(logs.all.contains { $0.contains("alg does not match the key's algorithm") })
    }
}
