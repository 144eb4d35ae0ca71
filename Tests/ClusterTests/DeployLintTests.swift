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
            let parse = try runProcess(
                "/usr/bin/env",
                ["python3", "-c", "import sys, yaml; list(yaml.safe_load_all(open(sys.argv[1])))", Self.deploy(file)]
            )
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

    @Test("docker-compose.yml: no --auth none, no guest or literal broker passwords, management UI on loopback only")
    func composeHasNoDefaultCredentials() throws {
        let text = try String(contentsOfFile: Self.deploy("docker-compose.yml"), encoding: .utf8)
        // What compose reads: the file without its comment lines.
        let active = text.split(separator: "\n")
            .filter { !$0.trimmingCharacters(in: .whitespaces).hasPrefix("#") }
            .joined(separator: "\n")
        #expect(!text.contains("--auth none") && !text.contains("--auth=none"))
        #expect(active.firstMatch(of: /SWITCHBOARD_AUTH:\s*"?none/) == nil)
        #expect(active.contains("SWITCHBOARD_AUTH: jwt"))
        #expect(active.contains(#"SWITCHBOARD_JWT_SECRET: "${SWITCHBOARD_JWT_SECRET:?"#), "the JWT secret is a required variable")
        #expect(!active.lowercased().contains("guest"), "no guest user or guest/guest credentials")
        // Every broker password is a variable compose requires (`${NAME:?message}`), never a literal.
        let passwords =
            active.matches(of: /RABBITMQ_DEFAULT_PASS:\s*"?([^"\n]*)/).map { String($0.1) }
            + active.matches(of: #/amqps?://[^:@/\s]+:([^@\n]+)@/#).map { String($0.1) }
        #expect(passwords.count >= 2, "the broker's own password and the gateways' backplane URL")
        for password in passwords {
            #expect(password.hasPrefix("${") && password.contains(":?"), "a literal broker password: \(password)")
        }
        // The management UI is published on loopback only, AMQP not at all.
        let management = active.matches(of: /"?([0-9.]*:)?15672:15672"?/).map { $0.1.map(String.init) }
        #expect(!management.isEmpty && management.allSatisfy { $0 == "127.0.0.1:" }, "\(management)")
        #expect(active.firstMatch(of: /[":\s]5672:5672/) == nil)
        // The broker users come from deploy/rabbitmq/users.sh, which the broker's container runs.
        #expect(active.contains("./rabbitmq/users.sh:"))
        let users = try runProcess("/bin/sh", ["-n", Self.deploy("rabbitmq/users.sh")])
        #expect(users.status == 0, "\(users.output)")
    }

    @Test("the token recipe of docker-compose.yml and docs/operations.md mints a token that a gateway with that secret accepts")
    func composeTokenRecipe() async throws {
        let compose = try String(contentsOfFile: Self.deploy("docker-compose.yml"), encoding: .utf8)
        let operations = try String(contentsOfFile: packageRoot.appendingPathComponent("docs/operations.md").path, encoding: .utf8)
        let recipe = try #require(compose.firstMatch(of: /python3 -c '([^'\n]+)' alice/), "a python3 one-liner in the compose file")
        #expect(operations.contains(String(recipe.0)), "docs/operations.md gives the same one-liner")
        let secret = (UUID().uuidString + UUID().uuidString).replacingOccurrences(of: "-", with: "")
        let minted = try runProcess("/usr/bin/env", ["python3", "-c", String(recipe.1), "alice"], environment: ["SWITCHBOARD_JWT_SECRET": secret])
        #expect(minted.status == 0, "\(minted.output)")
        let token = minted.output.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.split(separator: ".").count == 3, "a JWT: \(token)")

        let port = try await freePort()
        let directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("sb-token-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let gateway = try ChildProcess(
            name: "token-gateway",
            executable: try switchboardBinary(),
            arguments: ["serve", "--port", "\(port)", "--auth", "jwt", "--gateway-id", "gw-token", "--drain-grace", "0", "--drain-window", "0"],
            environment: ["SWITCHBOARD_JWT_SECRET": secret],
            logDirectory: directory
        )
        do {
            #expect(try await eventuallyAsync(timeout: .seconds(20)) { await httpStatus(port: port, path: "/healthz") == 200 })
            let client = try await TestClient.connect(port: port, path: "/ws", headers: [("Authorization", "Bearer \(token)")])
            let welcome = try await client.next()
            #expect(welcome["type"] == "welcome" && welcome["user"] == "alice", "\(welcome)")
            await client.close()
        } catch {
            await gateway.stop()
            throw error
        }
        await gateway.stop()
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
