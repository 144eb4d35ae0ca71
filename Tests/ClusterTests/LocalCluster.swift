import Foundation
import NIOCore
import SwitchboardClient
import SwitchboardTesting
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Three `switchboard serve` processes on one RabbitMQ behind a real HAProxy running
/// deploy/haproxy/haproxy.cfg, all on loopback. Each cluster has an exchange of its own.
final class LocalCluster: Sendable {
    struct GatewayProcess: Sendable {
        let id: String
        let port: Int
        let process: ChildProcess
    }

    let haproxyPort: Int
    let gateways: [GatewayProcess]
    let haproxy: ChildProcess
    let directory: URL

    private init(haproxyPort: Int, gateways: [GatewayProcess], haproxy: ChildProcess, directory: URL) {
        self.haproxyPort = haproxyPort
        self.gateways = gateways
        self.haproxy = haproxy
        self.directory = directory
    }

    /// Starts the gateways and HAProxy and waits until HAProxy sees every gateway ready.
    /// - Parameters:
    ///   - history: give the gateways a Redis history (the test Redis, a key prefix of the cluster's own).
    ///   - extraArguments: more `serve` flags for every gateway; `{tag}` becomes the cluster's tag.
    static func start(
        drainGrace: Double = 2.5,
        drainWindow: Double = 2,
        history: Bool = false,
        extraArguments: [String] = []
    ) async throws -> LocalCluster {
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("switchboard-cluster-\(tag)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let url = try Broker.url
        let historyArguments = history ? ["--history", try RedisServer.url + "?prefix=cluster.\(tag)"] : []
        var gateways: [GatewayProcess] = []
        for index in 1...3 {
            let port = try await freePort()
            let id = "gw-\(index)"
            let process = try ChildProcess(
                name: id,
                executable: try switchboardBinary(),
                arguments: [
                    "serve", "--port", "\(port)", "--gateway-id", "\(id)-\(tag)", "--auth", "none", "--backplane", url,
                    "--exchange", "cluster.\(tag)", "--drain-grace", "\(drainGrace)", "--drain-window", "\(drainWindow)",
                    // The tests send as fast as replies come back; the default rate limit would answer rate_limited.
                    "--rate-limit", "10000", "--rate-burst", "10000",
                    "--log-level", "info",
                ] + historyArguments + extraArguments.map { $0.replacingOccurrences(of: "{tag}", with: tag) },
                logDirectory: directory
            )
            gateways.append(GatewayProcess(id: id, port: port, process: process))
        }
        let haproxyPort = try await freePort()
        let haproxy = try ChildProcess(
            name: "haproxy",
            executable: URL(fileURLWithPath: "/usr/sbin/haproxy"),
            arguments: ["-db", "-f", packageRoot.appendingPathComponent("deploy/haproxy/haproxy.cfg").path],
            environment: [
                "SB_HAPROXY_BIND": "127.0.0.1:\(haproxyPort)",
                "SB_GATEWAY_1": "127.0.0.1:\(gateways[0].port)",
                "SB_GATEWAY_2": "127.0.0.1:\(gateways[1].port)",
                "SB_GATEWAY_3": "127.0.0.1:\(gateways[2].port)",
            ],
            logDirectory: directory
        )
        let cluster = LocalCluster(haproxyPort: haproxyPort, gateways: gateways, haproxy: haproxy, directory: directory)
        for gateway in gateways {
            guard try await eventuallyAsync(timeout: .seconds(30), { await httpStatus(port: gateway.port, path: "/readyz") == 200 }) else {
                await cluster.stop()
                throw TestFailure("\(gateway.id) did not become ready: \(gateway.process.log)")
            }
        }
        guard try await eventuallyAsync(timeout: .seconds(10), { await httpStatus(port: haproxyPort, path: "/readyz") == 200 }) else {
            await cluster.stop()
            throw TestFailure("HAProxy did not come up: \(haproxy.log)")
        }
        // Health checks run every second and need 2 passes (rise 2).
        try await Task.sleep(for: .seconds(2.5))
        return cluster
    }

    /// The HAProxy server name (gw-1…gw-3) of a gateway id as `welcome` reports it.
    func serverName(ofGatewayID gatewayID: String) -> String {
        String(gatewayID.split(separator: "-").prefix(2).joined(separator: "-"))
    }

    /// Connects through HAProxy; returns the client, the gateway it landed on, and HAProxy's cookie.
    func connect(_ user: String, cookie: String? = nil) async throws -> (client: TestClient, gateway: String, cookie: String?) {
        let headers = cookie.map { [("Cookie", $0)] } ?? []
        let client = try await TestClient.connect(port: haproxyPort, path: "/ws?user=\(user)", headers: headers)
        let welcome = try await client.next()
        guard welcome["type"] == "welcome", let gatewayID = welcome["gateway"] else { throw TestFailure("no welcome: \(welcome)") }
        let setCookie = client.connection.responseHeaders.first { $0.name.lowercased() == "set-cookie" }?.value
        let pair = setCookie.map { String($0.split(separator: ";")[0]) }
        return (client, serverName(ofGatewayID: gatewayID), pair ?? cookie)
    }

    func gateway(_ name: String) -> GatewayProcess {
        gateways.first { $0.id == name }!
    }

    func stop() async {
        await withTaskGroup(of: Void.self) { group in
            for gateway in gateways { group.addTask { await gateway.process.stop(grace: .seconds(15)) } }
        }
        await haproxy.stop()
        try? FileManager.default.removeItem(at: directory)
    }
}

/// The status code of `GET <target> HTTP/1.1` sent to 127.0.0.1:`port` byte for byte, on
/// a TCP connection of its own; nil when nothing answered within 5 s. `httpStatus` goes
/// through URLSession, which on Linux is libcurl: it resolves `/./` and `/../` and merges
/// `//` before sending, so it cannot send the spellings a load balancer must catch.
func rawHTTPStatus(port: Int, target: String) -> Int? {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { return nil }
    defer { close(descriptor) }
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    _ = setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    _ = setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { return nil }
    let request = Array("GET \(target) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n\r\n".utf8)
    var sent = 0
    while sent < request.count {
        let count = request[sent...].withUnsafeBytes { send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard count > 0 else { return nil }
        sent += count
    }
    // Only the status line is needed: read until its end (bounded).
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 1024)
    while !response.contains(UInt8(ascii: "\r")), response.count < 8192 {
        let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { break }
        response += buffer[..<count]
    }
    let statusLine = String(decoding: response.prefix { $0 != UInt8(ascii: "\r") }, as: UTF8.self).split(separator: " ")
    guard statusLine.count >= 2, statusLine[0].hasPrefix("HTTP/") else { return nil }
    return Int(statusLine[1])
}

/// A client that reconnects through HAProxy whenever its connection ends, like a real one,
/// and records every direct message it receives and every close code it got.
final class ReconnectingReceiver: Sendable {
    let user: String
    private let cluster: LocalCluster
    private let state = Mutex(State())
    private struct State {
        var received: Set<Int> = []
        var gateways: [String] = []
        var closeCodes: [UInt16?] = []
        var stopped = false
        var reconnectedAt: [ContinuousClock.Instant] = []
        var disconnectedAt: [ContinuousClock.Instant] = []
    }

    init(user: String, cluster: LocalCluster) {
        self.user = user
        self.cluster = cluster
    }

    var received: Set<Int> { state.withLock { $0.received } }
    var gateways: [String] { state.withLock { $0.gateways } }
    var closeCodes: [UInt16?] { state.withLock { $0.closeCodes } }
    var disconnectedAt: [ContinuousClock.Instant] { state.withLock { $0.disconnectedAt } }
    var reconnectedAt: [ContinuousClock.Instant] { state.withLock { $0.reconnectedAt } }
    var currentGateway: String? { state.withLock { $0.gateways.last } }

    func stop() { state.withLock { $0.stopped = true } }

    /// Runs until stopped: connect, read until the connection ends, reconnect after 100 ms.
    func run() async {
        var cookie: String?
        while !state.withLock({ $0.stopped }) {
            guard let (client, gateway, newCookie) = try? await cluster.connect(user, cookie: cookie) else {
                try? await Task.sleep(for: .milliseconds(100))
                continue
            }
            cookie = newCookie
            state.withLock {
                $0.gateways.append(gateway)
                $0.reconnectedAt.append(.now)
            }
            // Until the connection's stream ends: every event it received is read first, so a
            // close frame that came just before the socket closed is never skipped (checking
            // `channel.isActive` after a read timed out did skip it now and then).
            reading: while !state.withLock({ $0.stopped }) {
                let event: WebSocketConnection.Event
                do {
                    guard let next = try await client.nextEventOrEnd(timeout: .milliseconds(200)) else { break reading }
                    event = next
                } catch {
                    continue reading
                }
                switch event {
                case .text(let text):
                    if let frame = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], let data = frame["data"] as? Int {
                        state.withLock { _ = $0.received.insert(data) }
                    }
                case .close(let code):
                    state.withLock { $0.closeCodes.append(code) }
                default:
                    break
                }
            }
            state.withLock { $0.disconnectedAt.append(.now) }
            await client.abort()
            try? await Task.sleep(for: .milliseconds(100))
        }
    }
}
