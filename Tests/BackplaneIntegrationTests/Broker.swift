import AMQPClient
import Foundation
import Logging
import SwitchboardBackplane
import SwitchboardRabbitMQ
import SwitchboardServer
import SwitchboardTesting

/// The throwaway RabbitMQ that `scripts/test.sh` starts (scripts/rabbitmq.sh), found
/// through `SWITCHBOARD_AMQP_URL` and `SWITCHBOARD_RABBITMQ_DIR`.
enum Broker {
    static var url: String {
        get throws { try requiredEnvironment("SWITCHBOARD_AMQP_URL") }
    }

    /// Runs `rabbitmqctl ARGS` against the test broker and returns its output.
    @discardableResult
    static func ctl(_ arguments: [String]) throws -> String {
        let dir = try requiredEnvironment("SWITCHBOARD_RABBITMQ_DIR")
        let (status, text) = try runProcess(packageRoot.appendingPathComponent("scripts/rabbitmq.sh").path, ["ctl", dir] + arguments)
        guard status == 0 else { throw TestFailure("rabbitmqctl \(arguments) failed: \(text)") }
        return text
    }

    /// The broker's own view: (queue, routing key) of every binding on `exchange`.
    static func bindings(exchange: String) throws -> Set<Binding> {
        let text = try ctl(["list_bindings", "source_name", "destination_name", "routing_key", "--quiet", "--no-table-headers"])
        var result: Set<Binding> = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            guard fields.count == 3, fields[0] == exchange else { continue }
            result.insert(Binding(queue: fields[1], key: fields[2]))
        }
        return result
    }

    struct Binding: Hashable, CustomStringConvertible {
        let queue: String
        let key: String
        var description: String { "\(queue)←\(key)" }
    }
}
