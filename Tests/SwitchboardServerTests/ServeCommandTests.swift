import Foundation
import NIOCore
import NIOPosix
import SwitchboardTesting
import Testing

/// `switchboard serve` as a user runs it: the real binary, a real port, real signals.
@Suite("switchboard serve (the executable)", .serialized, .timeLimit(.minutes(1)))
struct ServeCommandTests {
    static func run(_ arguments: [String]) throws -> (process: Process, output: Pipe) {
        let process = Process()
        process.executableURL = try switchboardBinary()
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        return (process, output)
    }

    @Test("serve --port --backplane memory --auth none --gateway-id: healthz, a chat, and a clean exit on SIGTERM")
    func serveAndStop() async throws {
        let port = try await freePort()
        let (process, output) = try Self.run(["serve", "--port", "\(port)", "--backplane", "memory", "--auth", "none", "--gateway-id", "gw-1"])
        defer { if process.isRunning { process.terminate() } }
        let gateway = RunningGatewayAddress(port: port)
        #expect(try await gateway.waitUntilHealthy(timeout: .seconds(20)))

        let alice = try await TestClient.connect(port: port, path: "/ws?user=alice")
        #expect(try await alice.nextText() == #"{"type":"welcome","user":"alice","gateway":"gw-1"}"#)
        let bob = try await TestClient.connect(port: port, path: "/ws?user=bob")
        _ = try await bob.next()
        try await alice.send(#"{"type":"direct","to":"bob","data":"hi","id":"1"}"#)
        #expect(try await bob.nextText() == #"{"type":"direct","from":"alice","to":"bob","data":"hi"}"#)
        #expect(try await alice.nextText() == #"{"type":"ack","id":"1"}"#)
        await alice.close()
        await bob.close()

        process.terminate()  // SIGTERM
        #expect(try await eventually(timeout: .seconds(15)) { !process.isRunning })
        #expect(process.terminationStatus == 0)
        let log = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(log.contains("--auth none"), "the development-mode warning is logged")
    }

    @Test("an unsupported or malformed backplane URL, or JWT auth without a key, fails at once with a clear message")
    func badFlags() async throws {
        let (amqp, amqpOutput) = try Self.run(["serve", "--auth", "none", "--backplane", "kafka://guest:secret@127.0.0.1:5672/"])
        amqp.waitUntilExit()
        let amqpLog = String(decoding: amqpOutput.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(amqp.terminationStatus != 0)
        #expect(amqpLog.contains("unsupported backplane"))
        #expect(!amqpLog.contains("secret"), "the password is never printed")

        let (badAMQP, badAMQPOutput) = try Self.run(["serve", "--auth", "none", "--backplane", "amqp://guest:secret@127.0.0.1:99999/"])
        badAMQP.waitUntilExit()
        let badAMQPLog = String(decoding: badAMQPOutput.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(badAMQP.terminationStatus != 0)
        #expect(badAMQPLog.contains("invalid port"))
        #expect(!badAMQPLog.contains("secret"))

        // Worker events need RabbitMQ, never the main exchange; API keys must not be guessable.
        for (arguments, message) in [
            (["--events-exchange", "events"], "needs a RabbitMQ backplane"),
            (["--backplane", "amqp://127.0.0.1/", "--events-exchange", "switchboard"], "must differ from --exchange"),
            (["--api-key", "short"], "at least 16 bytes"),
        ] {
            let (process, output) = try Self.run(["serve", "--auth", "none"] + arguments)
            process.waitUntilExit()
            #expect(process.terminationStatus != 0)
            #expect(String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).contains(message), "\(arguments)")
        }

        // JWT is the default; without a key the gateway refuses to start rather than accept anyone.
        let (noKey, noKeyOutput) = try Self.run(["serve", "--port", "1"])
        noKey.waitUntilExit()
        #expect(noKey.terminationStatus != 0)
        #expect(String(decoding: noKeyOutput.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).contains("--auth jwt needs"))
    }
}

/// Health probe for a gateway in another process.
struct RunningGatewayAddress {
    let port: Int

    /// Polls `/healthz` until it answers 200 or `timeout` passes.
    func waitUntilHealthy(timeout: Duration) async throws -> Bool {
        let url = URL(string: "http://127.0.0.1:\(port)/healthz")!
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
