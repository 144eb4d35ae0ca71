import Foundation
import JWTKit
import NIOCore
import NIOPosix
import SwitchboardTesting
import Testing

/// `switchboard serve` as a user runs it: the real binary, a real port, real signals.
@Suite("switchboard serve (the executable)", .serialized, .timeLimit(.minutes(1)))
struct ServeCommandTests {
    /// Starts `switchboard ARGUMENTS`; what it prints goes to a log file (``ChildProcess/log``).
    static func run(_ arguments: [String]) throws -> ChildProcess {
        try ChildProcess(name: "serve", executable: try switchboardBinary(), arguments: arguments)
    }

    /// Runs `switchboard ARGUMENTS`, which is expected to exit by itself; its status and output.
    static func exited(_ arguments: [String]) async throws -> (status: Int32?, output: String) {
        let process = try run(arguments)
        defer { process.signal(SIGKILL) }
        let status = await process.waitForExit(timeout: .seconds(20))
        return (status, process.log)
    }

    @Test("serve --port --backplane memory --auth none --gateway-id: healthz, a chat, and a clean exit on SIGTERM")
    func serveAndStop() async throws {
        let port = try await freePort()
        let process = try Self.run(["serve", "--port", "\(port)", "--backplane", "memory", "--auth", "none", "--gateway-id", "gw-1"])
        defer { process.signal(SIGKILL) }
        let gateway = RunningGatewayAddress(port: port)
        #expect(try await gateway.waitUntilHealthy(timeout: .seconds(20)))

        // The embedded default keeps history (--history memory): positions and offsets.
        let alice = try await TestClient.connect(port: port, path: "/ws?user=alice")
        let welcome = try await alice.next()
        #expect(welcome["type"] == "welcome" && welcome["user"] == "alice" && welcome["gateway"] == "gw-1")
        #expect(welcome.position?.offset == 0)
        let bob = try await TestClient.connect(port: port, path: "/ws?user=bob")
        let epoch = try #require(try await bob.next().position?.epoch)
        try await alice.send(#"{"type":"direct","to":"bob","data":"hi","id":"1"}"#)
        #expect(try await bob.nextText() == #"{"type":"direct","from":"alice","to":"bob","data":"hi","offset":1,"epoch":""# + epoch + #""}"#)
        #expect(try await alice.nextText() == #"{"type":"ack","id":"1"}"#)
        await alice.close()
        await bob.close()

        process.signal(SIGTERM)
        #expect(await process.waitForExit(timeout: .seconds(15)) == 0)
        let log = process.log
        #expect(log.contains("--auth none"), "the development-mode warning is logged")
    }

    @Test("an unsupported or malformed backplane URL, or JWT auth without a key, fails at once with a clear message")
    func badFlags() async throws {
        let (amqpStatus, amqpLog) = try await Self.exited(["serve", "--auth", "none", "--backplane", "kafka://guest:secret@127.0.0.1:5672/"])
        #expect(amqpStatus != nil && amqpStatus != 0)
        #expect(amqpLog.contains("unsupported backplane"))
        #expect(!amqpLog.contains("secret"), "the password is never printed")

        let (badAMQPStatus, badAMQPLog) = try await Self.exited(["serve", "--auth", "none", "--backplane", "amqp://guest:secret@127.0.0.1:99999/"])
        #expect(badAMQPStatus != nil && badAMQPStatus != 0)
        #expect(badAMQPLog.contains("invalid port"))
        #expect(!badAMQPLog.contains("secret"))

        // Worker events need RabbitMQ, never the main exchange; API keys must not be guessable.
        for (arguments, message) in [
            (["--events-exchange", "events"], "needs a RabbitMQ backplane"),
            (["--backplane", "amqp://127.0.0.1/", "--events-exchange", "switchboard"], "must differ from --exchange"),
            (["--api-key", "short"], "at least 16 bytes"),
        ] {
            let (status, output) = try await Self.exited(["serve", "--auth", "none"] + arguments)
            #expect(status != nil && status != 0)
            #expect(output.contains(message), "\(arguments)")
        }

        // JWT is the default; without a key the gateway refuses to start rather than accept anyone.
        let (noKeyStatus, noKeyOutput) = try await Self.exited(["serve", "--port", "1"])
        #expect(noKeyStatus != nil && noKeyStatus != 0)
        #expect(noKeyOutput.contains("--auth jwt needs"))
    }
}

/// `switchboard serve` refuses settings that would expose a gateway, and reads the JWT options.
@Suite("switchboard serve: insecure auth and JWT flags (the executable)", .serialized, .timeLimit(.minutes(1)))
struct ServeCommandAuthFlagTests {
    /// `switchboard ARGUMENTS` expected to refuse to start: under timeout(1), so that a
    /// regression that lets it start (as root, even on port 1) fails the test instead of hanging it.
    static func refusedStart(_ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, output: String) {
        try runProcess("/usr/bin/timeout", ["-k", "2", "5", try switchboardBinary().path] + arguments, environment: environment)
    }

    @Test("--auth none on a non-loopback --host (flag or SWITCHBOARD_HOST) refuses to start unless --allow-insecure-auth-none is given")
    func authNoneNeedsLoopback() async throws {
        for host in ["0.0.0.0", "::", "10.1.2.3", "192.168.0.1", "example.com", "128.0.0.1"] {
            let result = try Self.refusedStart(["serve", "--auth", "none", "--host", host, "--port", "1"])
            #expect(result.status != 0, "\(host)")
            #expect(result.output.contains("--allow-insecure-auth-none"), "\(host): \(result.output)")
        }
        let fromEnvironment = try Self.refusedStart(
            ["serve", "--port", "1"],
            environment: ["SWITCHBOARD_AUTH": "none", "SWITCHBOARD_HOST": "0.0.0.0"]
        )
        #expect(fromEnvironment.status != 0 && fromEnvironment.output.contains("--allow-insecure-auth-none"), "\(fromEnvironment.output)")

        // With the override (as a flag, then as a variable) it starts; 0.0.0.0 includes loopback.
        let port = try await freePort()
        let process = try ServeCommandTests.run(["serve", "--auth", "none", "--host", "0.0.0.0", "--port", "\(port)", "--allow-insecure-auth-none"])
        defer { process.signal(SIGKILL) }
        #expect(try await RunningGatewayAddress(port: port).waitUntilHealthy(timeout: .seconds(20)))
        await process.stop()
        #expect(process.log.contains("--auth none"))

        let directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("sb-insecure-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let secondPort = try await freePort()
        let child = try ChildProcess(
            name: "insecure",
            executable: try switchboardBinary(),
            arguments: ["serve", "--port", "\(secondPort)", "--drain-grace", "0", "--drain-window", "0"],
            environment: ["SWITCHBOARD_AUTH": "none", "SWITCHBOARD_HOST": "0.0.0.0", "SWITCHBOARD_ALLOW_INSECURE_AUTH_NONE": "1"],
            logDirectory: directory
        )
        #expect(try await RunningGatewayAddress(port: secondPort).waitUntilHealthy(timeout: .seconds(20)), "\(child.log)")
        await child.stop()

        // A loopback address other than 127.0.0.1 needs no override.
        let thirdPort = try await freePort()
        let loopback = try ServeCommandTests.run(["serve", "--auth", "none", "--host", "127.0.0.2", "--port", "\(thirdPort)"])
        defer { loopback.signal(SIGKILL) }
        #expect(
            try await RunningGatewayAddress(host: "127.0.0.2", port: thirdPort).waitUntilHealthy(timeout: .seconds(20)),
            "127.0.0.2 was refused: \(loopback.log)"
        )
        await loopback.stop()
    }

    @Test(
        "JWT flags: http:// --jwks, an out-of-range leeway, an unreachable https:// --jwks and a key without alg stop the start with a clear message"
    )
    func badJWTFlags() async throws {
        let directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("sb-jwks-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let noAlg = directory.appendingPathComponent("jwks.json")
        let key = try #require(ES256PrivateKey().publicKey.parameters)
        try #"{"keys":[{"kty":"EC","crv":"P-256","kid":"k-without-alg","x":"\#(key.x)","y":"\#(key.y)"}]}"#.write(
            to: noAlg,
            atomically: true,
            encoding: .utf8
        )
        for (arguments, message) in [
            (["--jwks", "http://127.0.0.1:1/jwks.json"], "plain http:// is refused"),
            (["--jwt-secret", Tokens.secret, "--jwt-leeway", "301"], "--jwt-leeway must be 0…300"),
            (["--jwks", "https://127.0.0.1:1/jwks.json"], "--jwks https://127.0.0.1:1/jwks.json: connection failed"),
            (["--jwks", noAlg.path], "'k-without-alg' has no \"alg\""),
            (["--jwks", noAlg.path, "--jwks-default-alg", "XS1"], "--jwks-default-alg XS1 is not one of"),
            (["--jwt-secret", Tokens.secret, "--jwks-ca-file", noAlg.path], "--jwks-ca-file needs an https:// --jwks"),
        ] {
            let result = try Self.refusedStart(["serve", "--port", "1"] + arguments)
            #expect(result.status != 0, "\(arguments)")
            #expect(result.output.contains(message), "\(arguments): \(result.output)")
        }
        // With a default alg the same file is accepted.
        let port = try await freePort()
        let gateway = try ChildProcess(
            name: "default-alg",
            executable: try switchboardBinary(),
            arguments: ["serve", "--port", "\(port)", "--jwks", noAlg.path, "--drain-grace", "0", "--drain-window", "0"],
            environment: ["SWITCHBOARD_JWKS_DEFAULT_ALG": "ES256"],
            logDirectory: directory
        )
        #expect(try await RunningGatewayAddress(port: port).waitUntilHealthy(timeout: .seconds(20)), "\(gateway.log)")
        await gateway.stop()
    }

    @Test("SWITCHBOARD_JWT_AUDIENCE (comma-separated) and --jwt-issuer reach the gateway: a token for another audience gets 401")
    func audienceFromEnvironment() async throws {
        let port = try await freePort()
        let directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("sb-aud-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let gateway = try ChildProcess(
            name: "aud",
            executable: try switchboardBinary(),
            arguments: ["serve", "--port", "\(port)", "--jwt-issuer", "https://id.example", "--drain-grace", "0", "--drain-window", "0"],
            environment: ["SWITCHBOARD_JWT_SECRET": Tokens.secret, "SWITCHBOARD_JWT_AUDIENCE": "switchboard, chat"],
            logDirectory: directory
        )
        #expect(try await RunningGatewayAddress(port: port).waitUntilHealthy(timeout: .seconds(20)), "\(gateway.log)")
        let good = try await JWTAuthenticationPolicyTests.token("alice", aud: ["chat"], iss: "https://id.example")
        let wrongAudience = try await JWTAuthenticationPolicyTests.token("bob", aud: ["billing"], iss: "https://id.example")
        let wrongIssuer = try await JWTAuthenticationPolicyTests.token("carol", aud: ["chat"], iss: "https://evil.example")
        try await expectAccepted(good, as: "alice", port: port)
        #expect(await refusal(port: port, path: "/ws?token=\(wrongAudience)") == 401)
        #expect(await refusal(port: port, path: "/ws?token=\(wrongIssuer)") == 401)
        await gateway.stop()
    }
}

/// Health probe for a gateway in another process.
struct RunningGatewayAddress {
    var host = "127.0.0.1"
    let port: Int

    /// Polls `/healthz` until it answers 200 or `timeout` passes.
    func waitUntilHealthy(timeout: Duration) async throws -> Bool {
        let url = URL(string: "http://\(host):\(port)/healthz")!
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let (_, response) = try? await URLSession.shared.data(from: url), (response as? HTTPURLResponse)?.statusCode == 200 {
                return true
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        return false
    }
}

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
