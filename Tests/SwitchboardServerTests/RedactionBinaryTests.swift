import Foundation
import SwitchboardTesting
import Testing

/// `switchboard serve` with a password in every form a `--backplane` value can carry:
/// neither the start-up log nor an error may show it.
@Suite("switchboard serve never prints a backplane password", .serialized, .timeLimit(.minutes(2)))
struct RedactionBinaryTests {
    /// Runs `serve` until it logs that it started or exits; returns everything it printed.
    static func output(backplane: String) async throws -> (exited: Bool, text: String) {
        let port = try await freePort()
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("switchboard-redaction-\(UUID().uuidString).log")
        guard FileManager.default.createFile(atPath: log.path, contents: nil) else { throw TestFailure("cannot create \(log.path)") }
        defer { try? FileManager.default.removeItem(at: log) }
        let process = Process()
        process.executableURL = try switchboardBinary()
        process.arguments = ["serve", "--auth", "none", "--port", "\(port)", "--gateway-id", "gw-redaction", "--backplane", backplane, "--web-root", "off"]
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        let started = try await eventually(timeout: .seconds(20)) {
            !process.isRunning || ((try? String(contentsOf: log, encoding: .utf8))?.contains("starting gateway") ?? false)
        }
        #expect(started, "serve neither started nor exited")
        let exited = !process.isRunning
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        try handle.close()
        return (exited, try String(contentsOf: log, encoding: .utf8))
    }

    @Test(
        "logged at start, redacted",
        arguments: [
            "amqp://gw:s3cret@127.0.0.1:1/",
            "amqps://gw:s3cret@127.0.0.1:1/",
            "redis://s3cret@127.0.0.1:1",
            "redis://:s3cret@127.0.0.1:1?mode=broadcast",
            "redis://app:s3cret@127.0.0.1:1",
        ]
    )
    func startupLog(backplane: String) async throws {
        let (exited, text) = try await Self.output(backplane: backplane)
        #expect(!exited, "\(text)")
        #expect(text.contains("starting gateway"))
        #expect(text.contains("***"), "the URL is logged, redacted: \(text)")
        #expect(!text.contains("s3cret"), "\(text)")
    }

    @Test(
        "refused with an error, redacted",
        arguments: [
            "amqp://gw:s3c?ret@127.0.0.1:1/",
            "amqp://gw:s3cret@127.0.0.1:1/?bogus=1",
            "redis://s3c/ret@127.0.0.1:1",
            "redis://:s3cret@127.0.0.1:1?bogus=1",
            "redis://s3c#ret@127.0.0.1:1",
            "amqp://a:s3cret@127.0.0.1:1/,amqp://b:s3c,ret@127.0.0.1:99999/",
            "kafka://a:s3cret@127.0.0.1:1",
        ]
    )
    func refused(backplane: String) async throws {
        let (exited, text) = try await Self.output(backplane: backplane)
        #expect(exited, "serve refused the URL")
        #expect(text.contains("backplane"), "\(text)")
        #expect(!text.contains("s3c"), "\(text)")
    }
}
