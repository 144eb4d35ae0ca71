public import Foundation
import NIOCore
import NIOPosix

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The package's root folder (tests run scripts and read deploy/ from it).
public let packageRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// The `switchboard` binary that `swift build` put beside the test bundle.
public func switchboardBinary() throws -> URL {
    let besideTests = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("switchboard")
    let candidates = [besideTests, packageRoot.appendingPathComponent(".build/debug/switchboard")]
    guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
        throw TestFailure("switchboard binary not found in \(candidates.map(\.path))")
    }
    return found
}

/// A loopback port that was free a moment ago.
public func freePort() async throws -> Int {
    let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
    let port = channel.localAddress?.port ?? 0
    try await channel.close()
    return port
}

/// A child process whose output goes to a log file (a pipe nobody reads would block it).
public final class ChildProcess: Sendable {
    public let name: String
    public let logPath: String
    private let process: Process

    public init(name: String, executable: URL, arguments: [String], environment: [String: String] = [:], logDirectory: URL) throws {
        self.name = name
        logPath = logDirectory.appendingPathComponent("\(name).log").path
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        process.standardOutput = log
        process.standardError = log
        try process.run()
        self.process = process
    }

    public var pid: Int32 { process.processIdentifier }
    public var isRunning: Bool { process.isRunning }
    public var exitStatus: Int32? { process.isRunning ? nil : process.terminationStatus }

    public func signal(_ signal: Int32) {
        if process.isRunning { kill(process.processIdentifier, signal) }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    public func stop(grace: Duration = .seconds(10)) async {
        signal(SIGTERM)
        let deadline = ContinuousClock.now + grace
        while process.isRunning, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(50)) }
        signal(SIGKILL)
        while process.isRunning { try? await Task.sleep(for: .milliseconds(10)) }
    }

    public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
}

/// GET over plain HTTP; nil when nothing answered.
public func httpStatus(port: Int, path: String) async -> Int? {
    guard let url = URL(string: "http://127.0.0.1:\(port)\(path)"),
        let (_, response) = try? await URLSession.shared.data(from: url)
    else { return nil }
    return (response as? HTTPURLResponse)?.statusCode
}

/// Runs a program to completion and returns its exit status and its output (stdout and stderr).
///
/// posix_spawn rather than Foundation's `Process`, whose pipe's write end leaked into a
/// daemon started by the script (scripts/redis.sh start), so that reading the output
/// never ended.
public func runProcess(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, output: String) {
    var pipeEnds: [Int32] = [0, 0]
    guard pipe(&pipeEnds) == 0 else { throw TestFailure("pipe() failed for \(executable)") }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, pipeEnds[1], 1)
    posix_spawn_file_actions_adddup2(&actions, pipeEnds[1], 2)
    posix_spawn_file_actions_addclose(&actions, pipeEnds[0])
    // Else a daemon the script starts would inherit the write end and the read below
    // would never see end-of-file (what made Foundation's Process hang here).
    posix_spawn_file_actions_addclose(&actions, pipeEnds[1])
    // Nothing else of the test process either: an inherited listening socket (freePort's,
    // a test gateway's) would keep its port busy for as long as the child lives.
    closeInheritedDescriptors(&actions)
    let merged = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    let argv = ([executable] + arguments).map { strdup($0) } + [nil]
    let envp = merged.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { (argv + envp).forEach { free($0) } }
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, executable, &actions, nil, argv, envp)
    close(pipeEnds[1])
    guard spawned == 0 else {
        close(pipeEnds[0])
        throw TestFailure("cannot start \(executable): errno \(spawned)")
    }
    let output = FileHandle(fileDescriptor: pipeEnds[0], closeOnDealloc: true).readDataToEndOfFile()
    var status: Int32 = 0
    while waitpid(pid, &status, 0) == -1, errno == EINTR {}
    // WIFEXITED / WEXITSTATUS, which Swift does not import as macros.
    let exitStatus = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    return (exitStatus, String(decoding: output, as: UTF8.self))
}

/// An environment variable that `scripts/test.sh` sets (a broker's URL, its folder);
/// a clear failure when the tests run without it.
public func requiredEnvironment(_ name: String) throws -> String {
    guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else {
        throw TestFailure("\(name) is not set: run ./scripts/test.sh, which starts the brokers the tests use")
    }
    return value
}

/// Asks the child to close every descriptor from 3 up: glibc's
/// `posix_spawn_file_actions_addclosefrom_np` (2.34+), which Swift's Glibc module does not
/// export, looked up at run time; without it, each descriptor open now is closed one by one.
private func closeInheritedDescriptors(_ actions: inout posix_spawn_file_actions_t) {
    typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    if let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") {
        let addCloseFrom = unsafeBitCast(symbol, to: AddCloseFrom.self)
        if addCloseFrom(&actions, 3) == 0 { return }
    }
    let open = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    for descriptor in open.compactMap({ Int32($0) }) where descriptor > 2 {
        posix_spawn_file_actions_addclose(&actions, descriptor)
    }
}

