import ArgumentParser

/// The `switchboard` command: run a gateway, or load-test one.
@main
struct Switchboard: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchboard",
        abstract: "A horizontally scalable WebSocket gateway.",
        subcommands: [ServeCommand.self, BenchCommand.self],
        defaultSubcommand: ServeCommand.self
    )
}
