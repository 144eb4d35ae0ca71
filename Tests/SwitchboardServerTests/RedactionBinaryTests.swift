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
        let process = try ChildProcess(
            name: "redaction",
            executable: try switchboardBinary(),
            arguments: [
                "serve", "--auth", "none", "--port", "\(port)", "--gateway-id", "gw-redaction", "--backplane", backplane, "--web-root", "off",
            ]
        )
        defer { process.signal(SIGKILL) }
        // Its exit is awaited; a start has no event but its log line, so that is polled.
        let started = try await eventually(timeout: .seconds(20)) { !process.isRunning || process.log.contains("starting gateway") }
        #expect(started, "serve neither started nor exited")
        let exited = !process.isRunning
        await process.stop()
        return (exited, process.log)
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
