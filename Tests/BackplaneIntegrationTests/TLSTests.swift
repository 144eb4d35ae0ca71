import AMQPClient
import Foundation
import Logging
import SwitchboardRabbitMQ
import SwitchboardTesting
import Synchronization
import Testing

/// `amqps://` through rabbitmq-c's OpenSSL, against the test broker's TLS listener
/// (scripts/rabbitmq.sh makes a throwaway CA for it).
@Suite("RabbitMQ over TLS (amqps://)", .needsRabbitMQ, .serialized, .timeLimit(.minutes(2)))
struct TLSTests {
    static var amqpsURL: String {
        get throws { try requiredEnvironment("SWITCHBOARD_AMQPS_URL") }
    }

    @Test("two gateways on amqps:// exchange a direct message")
    func gatewaysOverTLS() async throws {
        let amqp = try AMQPConfiguration(url: try Self.amqpsURL)
        #expect(amqp.tls?.verifyPeer == true)
        #expect(amqp.tls?.caCertificatePath?.hasSuffix("tls/ca.pem") == true)
        let cluster = try BackplaneCluster(.rabbitmq, gateways: 2, amqp: amqp)
        try await cluster.run { gateways in
            let alice = try await gateways[0].connect("alice")
            let bob = try await gateways[1].connect("bob")
            try await alice.send(#"{"type":"direct","to":"bob","data":"over tls","id":"t"}"#)
            #expect(try await bob.next()["data"] == "over tls")
            #expect(try await alice.next()["type"] == "ack")
            await alice.close()
            await bob.close()
        }
    }

    @Test("a broker certificate from another CA is refused, with OpenSSL's reason")
    func wrongCertificateAuthority() async throws {
        let url = try Self.amqpsURL.replacingOccurrences(of: "tls/ca.pem", with: "tls/other-ca.pem")
        let errors = Mutex<[AMQPError]>([])
        let connection = AMQPConnection(
            brokers: [try AMQPConfiguration(url: url)],
            name: "tls-wrong-ca",
            logger: Logger(label: "test.tls"),
            setUp: { _ in },
            onStateChange: { state in
                if case .disconnected(let error) = state { errors.withLock { $0.append(error) } }
            }
        )
        connection.start()
        #expect(try await eventually(timeout: .seconds(10)) { !errors.withLock { $0.isEmpty } })
        #expect(!connection.isOpen)
        await connection.shutdown()
        let first = try #require(errors.withLock { $0.first })
        #expect(first.code == .connectFailed)
        #expect(first.libraryStatus != nil)
    }
}
