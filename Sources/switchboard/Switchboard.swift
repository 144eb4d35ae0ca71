import ArgumentParser
import Foundation

/// The `switchboard` command: run a gateway (the load generator is `switchboard-bench`).
@main
struct Switchboard: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchboard",
        abstract: "A horizontally scalable WebSocket gateway.",
        subcommands: [ServeCommand.self],
        defaultSubcommand: ServeCommand.self
    )

    static func main() async {
        let arguments = EnvironmentOptions.apply(
            to: Array(CommandLine.arguments.dropFirst()),
            environment: ProcessInfo.processInfo.environment
        )
        await main(arguments)
    }
}

/// Every `serve` flag can also come from an environment variable: `--max-message-size`
/// from `SWITCHBOARD_MAX_MESSAGE_SIZE`, and so on. A flag on the command line wins.
enum EnvironmentOptions {
    /// The `serve` options that environment variables may set.
    static let serveOptions = [
        "host", "port", "backplane", "exchange", "exchange-type", "auth", "jwt-secret", "jwt-secret-file", "jwt-public-key", "jwks",
        "allowed-origin", "tls-cert", "tls-key", "gateway-id", "max-message-size", "max-outbound-bytes", "max-rooms-per-connection",
        "max-connections-per-user", "rate-limit", "rate-burst", "handshake-timeout", "ping-interval", "idle-timeout",
        "log-level", "drain-grace", "drain-window", "web-root", "events-exchange", "api-key", "event-loops",
        "max-connections", "max-connections-per-ip", "trusted-proxy", "join-rate", "join-burst",
        "jwks-refresh-interval", "jwks-ca-file", "jwks-default-alg", "jwt-audience", "jwt-issuer", "jwt-leeway",
        "max-pending-publishes", "max-pending-publish-bytes", "publish-timeout", "echo-path",
        "history", "history-size", "history-ttl", "history-meta-ttl", "recovery-limit",
        "presence", "presence-grace", "presence-ttl", "presence-limit", "presence-event-limit",
    ]

    /// The `serve` flags (no value) that environment variables may set: 1, true or yes turns one on.
    static let serveFlags = ["allow-insecure-auth-none", "allow-echo-on-any-host"]

    static func variableName(_ option: String) -> String {
        "SWITCHBOARD_" + option.uppercased().replacingOccurrences(of: "-", with: "_")
    }

    /// Appends `--option value` for each variable set whose option is not on the command line.
    static func apply(to arguments: [String], environment: [String: String]) -> [String] {
        // Only `serve` (named, or the default when the first argument is a flag or absent).
        if let first = arguments.first, !first.hasPrefix("-"), first != "serve" { return arguments }
        var result = arguments
        for option in serveOptions {
            let flag = "--" + option
            let given = arguments.contains { $0 == flag || $0.hasPrefix(flag + "=") }
            guard !given, let value = environment[variableName(option)], !value.isEmpty else { continue }
            result += [flag, value]
        }
        for option in serveFlags {
            let flag = "--" + option
            guard !arguments.contains(flag), let value = environment[variableName(option)], !value.isEmpty else { continue }
            switch value.lowercased() {
            case "1", "true", "yes": result.append(flag)
            case "0", "false", "no": break
            // Passed on as written, so that the parser refuses it with a clear message.
            default: result.append(flag + "=" + value)
            }
        }
        return result
    }
}
