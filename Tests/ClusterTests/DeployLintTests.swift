import Foundation
import SwitchboardTesting
import Testing

/// The deploy/ files cannot run here (no Docker engine, no Kubernetes), so they are
/// checked against the real binary: configs lint, YAML parses, and every flag and
/// endpoint they name exists.
@Suite("deploy/ files", .serialized, .timeLimit(.minutes(1)))
struct DeployLintTests {
    static func deploy(_ path: String) -> String { packageRoot.appendingPathComponent("deploy/\(path)").path }

    @Test("haproxy -c accepts deploy/haproxy/haproxy.cfg")
    func haproxyConfig() throws {
        let result = try runProcess(
            "/usr/sbin/haproxy",
            ["-c", "-f", Self.deploy("haproxy/haproxy.cfg")],
            environment: [
                "SB_HAPROXY_BIND": "127.0.0.1:18500", "SB_GATEWAY_1": "127.0.0.1:18501",
                "SB_GATEWAY_2": "127.0.0.1:18502", "SB_GATEWAY_3": "127.0.0.1:18503",
            ]
        )
        #expect(result.status == 0, "\(result.output)")
    }

    @Test("nginx -t accepts deploy/nginx/nginx.conf")
    func nginxConfig() throws {
        let result = try runProcess("/usr/sbin/nginx", ["-t", "-c", Self.deploy("nginx/nginx.conf"), "-p", NSTemporaryDirectory()])
        #expect(result.status == 0, "\(result.output)")
    }

    @Test("compose and Kubernetes YAML parse, and name only real flags and endpoints")
    func manifestsMatchTheBinary() throws {
        let files = ["docker-compose.yml", "kubernetes/deployment.yaml", "kubernetes/service.yaml", "kubernetes/poddisruptionbudget.yaml"]
        for file in files {
            let parse = try runProcess("/usr/bin/env", ["python3", "-c", "import sys, yaml; list(yaml.safe_load_all(open(sys.argv[1])))", Self.deploy(file)])
            #expect(parse.status == 0, "\(file): \(parse.output)")
        }
        let help = try runProcess(try switchboardBinary().path, ["serve", "--help"]).output
        // Options (`--host <host>`) and flags (`--allow-insecure-auth-none`), which take no value.
        let options = Set(help.matches(of: /--([a-z][a-z-]*[a-z])(?: <|\s)/).map { String($0.1) })
        #expect(options.contains("drain-window") && options.contains("backplane"))
        let variables = Set(options.map { "SWITCHBOARD_" + $0.uppercased().replacingOccurrences(of: "-", with: "_") })

        for file in files + ["Dockerfile"] {
            let text = try String(contentsOfFile: Self.deploy(file), encoding: .utf8)
            for match in text.matches(of: /SWITCHBOARD_[A-Z_]+/) {
                #expect(variables.contains(String(match.0)), "\(file) sets \(match.0), which is no serve option")
            }
        }
        let deployment = try String(contentsOfFile: Self.deploy("kubernetes/deployment.yaml"), encoding: .utf8)
        #expect(deployment.contains("path: /readyz") && deployment.contains("path: /healthz"))
        let grace = try #require(deployment.firstMatch(of: /terminationGracePeriodSeconds: (\d+)/).flatMap { Int($0.1) })
        #expect(grace >= 5 + 3 + 10 + 5, "the pod may drain fully before it is killed")
        let haproxy = try String(contentsOfFile: Self.deploy("haproxy/haproxy.cfg"), encoding: .utf8)
        #expect(haproxy.contains("GET /readyz"))
    }

    @Test("serve reads every setting from SWITCHBOARD_* variables, and a flag wins over the variable")
    func environmentVariables() async throws {
        let port = try await freePort()
        let directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("sb-env-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let gateway = try ChildProcess(
            name: "env-gateway",
            executable: try switchboardBinary(),
            arguments: ["serve", "--max-rooms-per-connection", "1"],
            environment: [
                "SWITCHBOARD_PORT": "\(port)", "SWITCHBOARD_AUTH": "none", "SWITCHBOARD_GATEWAY_ID": "gw-from-env",
                "SWITCHBOARD_MAX_ROOMS_PER_CONNECTION": "50", "SWITCHBOARD_DRAIN_GRACE": "0", "SWITCHBOARD_DRAIN_WINDOW": "0",
            ],
            logDirectory: directory
        )
        defer { try? FileManager.default.removeItem(at: directory) }
        #expect(try await eventuallyAsync(timeout: .seconds(20)) { await httpStatus(port: port, path: "/healthz") == 200 })
        let client = try await TestClient.connect(port: port, path: "/ws?user=env")
        #expect(try await client.next()["gateway"] == "gw-from-env")
        try await client.send(#"{"type":"join","room":"a"}"#)
        #expect(try await client.next()["type"] == "ack")
        try await client.send(#"{"type":"join","room":"b"}"#)
        #expect(try await client.next()["code"] == "forbidden", "the flag (1 room) beat the variable (50)")
        await client.close()
        await gateway.stop()
        #expect(gateway.exitStatus == 0)

        let invalid = try runProcess(try switchboardBinary().path, ["serve", "--auth", "none"], environment: ["SWITCHBOARD_MAX_MESSAGE_SIZE": "12"])
        #expect(invalid.status != 0 && invalid.output.contains("--max-message-size"))
    }
}
