import Foundation
import NIOCore
import NIOSSL
import SwitchboardClient
import SwitchboardServer
import SwitchboardTesting
import Testing

@Suite("wss:// (TLS on the gateway)", .serialized, .timeLimit(.minutes(1)))
struct TLSServerTests {
    /// A self-signed certificate for localhost, made with openssl in a fresh folder.
    static func makeCertificate() throws -> (certificate: String, key: String, directory: URL) {
        let directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("sb-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let certificate = directory.appendingPathComponent("cert.pem").path
        let key = directory.appendingPathComponent("key.pem").path
        let result = try runProcess(
            "/usr/bin/openssl",
            [
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", certificate, "-days", "1",
                "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ]
        )
        guard result.status == 0 else { throw TestFailure("openssl failed: \(result.output)") }
        return (certificate, key, directory)
    }

    @Test("with --tls-cert/--tls-key the gateway speaks wss://; a client that does not trust the certificate, or speaks plain ws://, gets nowhere")
    func secureWebSockets() async throws {
        let (certificate, key, directory) = try Self.makeCertificate()
        defer { try? FileManager.default.removeItem(at: directory) }
        let context = try NIOSSLContext(
            configuration: .makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            )
        )
        try await withGateway(configure: { $0.tls = context }) { gateway in
            var trusting = TLSConfiguration.makeClientConfiguration()
            trusting.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(certificate))
            let secure = try await WebSocketConnection.connect(host: "localhost", port: gateway.port, path: "/ws?user=alice", tls: trusting)
            var iterator = secure.events.makeAsyncIterator()
            guard case .text(let welcome) = await iterator.next() else {
                Issue.record("no welcome over TLS")
                return
            }
            #expect(welcome.contains(#""user":"alice""#))
            await secure.close()

            // The system trust store does not know this certificate.
            await #expect(throws: (any Error).self) {
                _ = try await WebSocketConnection.connect(
                    host: "localhost",
                    port: gateway.port,
                    path: "/ws?user=bob",
                    tls: .makeClientConfiguration()
                )
            }
            await #expect(throws: (any Error).self) {
                _ = try await WebSocketConnection.connect(host: "127.0.0.1", port: gateway.port, path: "/ws?user=carol")
            }
        }
    }
}
