import Foundation
import SwitchboardTesting

/// The throwaway Redis that `scripts/test.sh` starts (scripts/redis.sh), found through
/// `SWITCHBOARD_REDIS_URL` and `SWITCHBOARD_REDIS_DIR`.
enum RedisServer {
    static var url: String {
        get throws { try requiredEnvironment("SWITCHBOARD_REDIS_URL") }
    }

    /// Runs `redis-cli ARGS` against the test server and returns its output.
    @discardableResult
    static func cli(_ arguments: [String]) throws -> String {
        try script(["cli", try requiredEnvironment("SWITCHBOARD_REDIS_DIR")] + arguments)
    }

    /// Subscribers of `channel`, as the server counts them (`PUBSUB NUMSUB`).
    static func subscribers(_ channel: String) throws -> Int {
        let lines = try cli(["PUBSUB", "NUMSUB", channel]).split(separator: "\n")
        guard lines.count == 2, let count = Int(lines[1].trimmingCharacters(in: .whitespaces)) else {
            throw TestFailure("unexpected PUBSUB NUMSUB output: \(lines)")
        }
        return count
    }

    /// Stops the server (its PID, from its folder).
    static func stop() throws {
        try script(["stop", try requiredEnvironment("SWITCHBOARD_REDIS_DIR")])
    }

    /// Starts it again on the same port and folder.
    static func start() throws {
        let dir = try requiredEnvironment("SWITCHBOARD_REDIS_DIR")
        let port = try String(contentsOfFile: dir + "/port", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        try script(["start", dir, port])
    }

    @discardableResult
    private static func script(_ arguments: [String]) throws -> String {
        let (status, text) = try runProcess(packageRoot.appendingPathComponent("scripts/redis.sh").path, arguments)
        guard status == 0 else { throw TestFailure("scripts/redis.sh \(arguments) failed: \(text)") }
        return text
    }
}
