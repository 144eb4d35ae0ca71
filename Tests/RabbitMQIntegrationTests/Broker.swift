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
        get throws {
            guard let url = ProcessInfo.processInfo.environment["SWITCHBOARD_AMQP_URL"] else {
                throw TestFailure("SWITCHBOARD_AMQP_URL is not set: run ./scripts/test.sh, which starts a RabbitMQ for the tests")
            }
            return url
        }
    }

    /// Runs `rabbitmqctl ARGS` against the test broker and returns its output.
    @discardableResult
    static func ctl(_ arguments: [String]) throws -> String {
        guard let dir = ProcessInfo.processInfo.environment["SWITCHBOARD_RABBITMQ_DIR"] else {
            throw TestFailure("SWITCHBOARD_RABBITMQ_DIR is not set: run ./scripts/test.sh")
        }
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

/// Gateways on RabbitMQ backplanes that share an exchange of their own, so that tests
/// running side by side never see each other's traffic.
struct RabbitCluster: Sendable {
    let tag: String
    let exchange: String
    let backplanes: [RabbitMQBackplane]

    init(gateways: Int, amqp: AMQPConfiguration? = nil) throws {
        tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        exchange = "sbtest.\(tag)"
        var logger = Logger(label: "test.rabbitmq")
        logger.logLevel = .warning
        let amqp = try amqp ?? AMQPConfiguration(url: try Broker.url)
        let exchange = self.exchange
        let tag = self.tag
        backplanes = (1...gateways).map { index in
            RabbitMQBackplane(
                configuration: RabbitMQConfiguration(amqp: amqp, gatewayID: "gw\(index)-\(tag)", exchange: exchange),
                logger: logger
            )
        }
    }

    func queue(_ gateway: Int) -> String { backplanes[gateway].configuration.queueName }

    /// Runs `body` with every gateway up and its backplane ready.
    func run<T: Sendable>(_ body: @Sendable ([RunningGateway]) async throws -> T) async throws -> T {
        let backplanes = self.backplanes
        return try await withGateways(backplanes, configure: { configuration, index in
            configuration.gatewayID = backplanes[index].configuration.gatewayID
        }) { gateways in
            guard try await eventually(timeout: .seconds(20), { backplanes.allSatisfy(\.isReady) }) else {
                throw TestFailure("the RabbitMQ backplanes did not become ready")
            }
            return try await body(gateways)
        }
    }
}
