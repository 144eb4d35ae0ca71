public import Foundation
import NIOCore
import NIOPosix
import Synchronization

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

/// A program running beside the tests (a `switchboard serve`, HAProxy), started by the
/// one launcher in this file (``spawn(_:_:environment:output:)``): its output goes to a
/// log file (a pipe nobody reads would block it), and it inherits no other descriptor.
///
/// A thread of its own waits for its exit (`waitpid` blocks), so ``waitForExit(timeout:)``
/// wakes on the exit itself.
public final class ChildProcess: Sendable {
    public let name: String
    public let logPath: String
    public let pid: Int32
    private let removesLog: Bool
    /// Set once, by the waiting thread, before it announces the exit in `exits`.
    private let status = Mutex<Int32?>(nil)
    private let exits = EventInbox<Int32>()

    /// Starts `executable`; its stdout and stderr go to `<logDirectory>/<name>.log`, or,
    /// without a folder, to a temporary file removed with this object.
    public init(name: String, executable: URL, arguments: [String], environment: [String: String] = [:], logDirectory: URL? = nil) throws {
        self.name = name
        removesLog = logDirectory == nil
        let directory = logDirectory ?? FileManager.default.temporaryDirectory
        logPath = directory.appendingPathComponent(logDirectory == nil ? "switchboard-\(name)-\(UUID().uuidString).log" : "\(name).log").path
        let log = open(logPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard log >= 0 else { throw TestFailure("cannot create \(logPath): errno \(errno)") }
        defer { close(log) }
        pid = try spawn(executable.path, arguments, environment: environment, output: log)
        RunningChildren.add(pid)
        // Holds this object until the child exits (its log outlives a test that lets go early).
        Thread.detachNewThread { [self] in
            let exitStatus = waitForChild(pid)
            RunningChildren.remove(pid)
            status.withLock { $0 = exitStatus }
            exits.append(exitStatus)
            exits.finish()
        }
    }

    deinit {
        if removesLog { try? FileManager.default.removeItem(atPath: logPath) }
    }

    public var isRunning: Bool { status.withLock { $0 == nil } }
    /// The exit status (128 + the signal's number when a signal ended it); nil while it runs.
    public var exitStatus: Int32? { status.withLock { $0 } }

    /// Sends `signal` unless the process has already exited (its PID may be reused then).
    public func signal(_ signal: Int32) {
        status.withLock { if $0 == nil { _ = kill(pid, signal) } }
    }

    /// Waits for the exit; returns its status, or nil when it still runs after `timeout`.
    @discardableResult
    public func waitForExit(timeout: Duration) async -> Int32? {
        if let exited = exitStatus { return exited }
        // One reader gets the exit from the inbox; any other one gets the end: both read `status`.
        _ = try? await exits.next(timeout: timeout)
        return exitStatus
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    public func stop(grace: Duration = .seconds(10)) async {
        signal(SIGTERM)
        guard await waitForExit(timeout: grace) == nil else { return }
        signal(SIGKILL)
        await waitForExit(timeout: .seconds(30))
    }

    public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
}

/// The children still running, killed (SIGKILL, by PID) when the test process exits: a test
/// that ends early (its time limit, a thrown error before its clean-up) never leaves a
/// gateway or an HAProxy behind.
enum RunningChildren {
    private static let pids = Mutex<Set<Int32>>([])
    private static let killAtExit: Void = {
        atexit {
            for pid in RunningChildren.pids.withLock({ $0 }) { _ = kill(pid, SIGKILL) }
        }
    }()

    static func add(_ pid: Int32) {
        _ = killAtExit
        pids.withLock { _ = $0.insert(pid) }
    }

    /// Called once the child was reaped: its PID may be reused from then on.
    static func remove(_ pid: Int32) {
        pids.withLock { _ = $0.remove(pid) }
    }
}

/// GET over plain HTTP; nil when nothing answered.
public func httpStatus(port: Int, path: String) async -> Int? {
    guard let url = URL(string: "http://127.0.0.1:\(port)\(path)"),
        let (_, response) = try? await URLSession.shared.data(from: url)
    else { return nil }
    return (response as? HTTPURLResponse)?.statusCode
}

/// GET over plain HTTP: the status and body; nil when nothing answered.
public func httpGet(port: Int, path: String) async -> (status: Int, body: String)? {
    guard let url = URL(string: "http://127.0.0.1:\(port)\(path)"),
        let (data, response) = try? await URLSession.shared.data(from: url)
    else { return nil }
    return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
}

/// The value of an unlabelled Prometheus series in a gateway's `/metrics`; nil when absent.
public func metricValue(_ name: String, port: Int) async -> Double? {
    guard let (status, body) = await httpGet(port: port, path: "/metrics"), status == 200 else { return nil }
    for line in body.split(separator: "\n") where line.hasPrefix(name + " ") {
        return Double(line.dropFirst(name.count + 1).trimmingCharacters(in: .whitespaces))
    }
    return nil
}

/// Runs a program to completion and returns its exit status and its output (stdout and
/// stderr, read to the end).
///
/// It blocks the calling thread until the program exits: for short commands (a script,
/// `openssl`); use ``ChildProcess`` for anything that keeps running.
public func runProcess(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, output: String) {
    var pipeEnds: [Int32] = [0, 0]
    guard pipe(&pipeEnds) == 0 else { throw TestFailure("pipe() failed for \(executable)") }
    let pid: pid_t
    do {
        pid = try spawn(executable, arguments, environment: environment, output: pipeEnds[1])
    } catch {
        close(pipeEnds[0])
        close(pipeEnds[1])
        throw error
    }
    // Only the child holds the write end now, so the read ends when the child (and
    // anything it started that kept its stdout) has exited.
    close(pipeEnds[1])
    let output = FileHandle(fileDescriptor: pipeEnds[0], closeOnDealloc: true).readDataToEndOfFile()
    return (waitForChild(pid), String(decoding: output, as: UTF8.self))
}

/// The one launcher of the test helpers: starts `executable` with `output` as its stdout
/// and stderr and no other descriptor of the test process.
///
/// posix_spawn rather than Foundation's `Process`, which let descriptors leak into the
/// child: a pipe's write end leaked into a daemon that a script started (scripts/redis.sh
/// start), so reading the output never ended, and an inherited listening socket
/// (freePort's, a test gateway's) would keep its port busy for as long as the child lives.
private func spawn(_ executable: String, _ arguments: [String], environment: [String: String], output: Int32) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, output, 1)
    posix_spawn_file_actions_adddup2(&actions, output, 2)
    // After the dup2s: 0, 1 and 2 stay, everything from 3 up (`output` included) goes.
    closeInheritedDescriptors(&actions)
    let merged = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    let argv = ([executable] + arguments).map { strdup($0) } + [nil]
    let envp = merged.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { for pointer in argv + envp { free(pointer) } }
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, executable, &actions, nil, argv, envp)
    guard spawned == 0 else { throw TestFailure("cannot start \(executable): errno \(spawned)") }
    return pid
}

/// Blocks until child `pid` exits; its exit status, or 128 + the signal that ended it.
private func waitForChild(_ pid: pid_t) -> Int32 {
    var status: Int32 = 0
    while waitpid(pid, &status, 0) == -1, errno == EINTR {}
    // WIFEXITED / WEXITSTATUS, which Swift does not import as macros.
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
}

/// An environment variable that `scripts/test.sh` sets (a broker's URL, its folder);
/// a clear failure when the tests run without it.
public func requiredEnvironment(_ name: String) throws -> String {
    guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else {
        let why = TestBrokers.areRequired ? " (CI or SWITCHBOARD_REQUIRE_BROKERS=1: the broker suites may not be skipped)" : ""
        throw TestFailure("\(name) is not set\(why): run ./scripts/test.sh, which starts the brokers the tests use")
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
