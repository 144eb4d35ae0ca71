import Synchronization
import Testing

@testable import AMQPClient

@Suite("AMQP URLs and the confirm window")
struct AMQPConfigurationTests {
    @Test("amqp:// URLs give host, port, vhost and credentials, percent-decoded")
    func parsesURLs() throws {
        let plain = try AMQPConfiguration(url: "amqp://user:p%40ss@broker.example:5673/my%2Fvhost?heartbeat=5&connection_timeout=2500")
        #expect(plain.host == "broker.example")
        #expect(plain.port == 5673)
        #expect(plain.username == "user")
        #expect(plain.password == "p@ss")
        #expect(plain.virtualHost == "my/vhost")
        #expect(plain.heartbeatSeconds == 5)
        #expect(plain.connectTimeout == .milliseconds(2500))
        #expect(plain.tls == nil)

        let defaults = try AMQPConfiguration(url: "amqp://")
        #expect(defaults.host == "127.0.0.1" && defaults.port == 5672 && defaults.virtualHost == "/" && defaults.username == "guest")
        #expect(try AMQPConfiguration(url: "amqp://h/").virtualHost == "/")
        #expect(try AMQPConfiguration(url: "amqp://h/%2f").virtualHost == "/")
        #expect(try AMQPConfiguration(url: "amqp://[::1]:5680/").host == "::1")
        #expect(try AMQPConfiguration(url: "amqp://[::1]:5680/").port == 5680)
    }

    @Test("amqps:// turns TLS on with verification, port 5671, and takes certificate paths")
    func parsesTLS() throws {
        let tls = try AMQPConfiguration(url: "amqps://u:p@localhost/?cacertfile=/tmp/ca.pem&certfile=/c.pem&keyfile=/k.pem")
        #expect(tls.port == 5671)
        #expect(tls.tls == AMQPConfiguration.TLS(caCertificatePath: "/tmp/ca.pem", certificatePath: "/c.pem", keyPath: "/k.pem", verifyPeer: true))
        #expect(try AMQPConfiguration(url: "amqps://h/?verify=verify_none").tls?.verifyPeer == false)
    }

    @Test("bad URLs are refused, and the error never shows the password")
    func rejectsBadURLs() {
        for url in [
            "http://h/", "amqp://u:secret@h:0/", "amqp://u:secret@h:70000/", "amqp://u:secret@h:x/", "amqp://h/?heartbeat=-1", "amqp://h/?bogus=1",
            "amqp://[::1/",
        ] {
            do {
                _ = try AMQPConfiguration(url: url)
                Issue.record("\(url) was accepted")
            } catch {
                #expect(error.code == .invalidConfiguration)
                #expect(!error.description.contains("secret"))
            }
        }
        let configuration = try? AMQPConfiguration(url: "amqp://u:secret@h/")
        #expect(configuration?.redactedDescription.contains("secret") == false)
    }

    @Test("confirms: multiple acks complete every tag up to theirs; a return before the ack makes it returned; nacks fail")
    func confirmWindow() {
        let results = ResultsBox()
        var window = AMQPConfirmWindow()
        let later = ContinuousClock.now + .seconds(3600)
        for index in 1...5 { window.add(deadline: later) { results.append(index, $0) } }
        #expect(window.count == 5)
        window.markReturned(tag: 2, replyCode: 312, replyText: "NO_ROUTE")
        window.acknowledge(tag: 3, multiple: true)
        window.reject(tag: 5, multiple: false)
        #expect(window.count == 1)
        window.failAll(AMQPError(.connectionLost, "gone"))
        #expect(window.count == 0)
        #expect(results.summary == ["1:confirmed", "2:returned 312", "3:confirmed", "5:nacked", "4:connection_lost"])
    }

    @Test("confirm timeouts: expired publishes are answered timed_out once, keep their slot until acked, and a late ack answers nothing twice")
    func confirmTimeouts() {
        let results = ResultsBox()
        var window = AMQPConfirmWindow()
        let start = ContinuousClock.now
        for index in 1...4 { window.add(deadline: start + .seconds(index)) { results.append(index, $0) } }
        window.expire(now: start + .milliseconds(2500), timeout: .seconds(1))
        #expect(results.summary == ["1:timed_out", "2:timed_out"])
        #expect(window.count == 4, "timed-out publishes are still unconfirmed on the wire")
        #expect(window.firstDeadline == start + .seconds(3))
        window.expire(now: start + .milliseconds(2600), timeout: .seconds(1))
        #expect(results.summary.count == 2, "nothing is answered twice")
        window.acknowledge(tag: 3, multiple: true)
        #expect(window.count == 1)
        #expect(results.summary == ["1:timed_out", "2:timed_out", "3:confirmed"])
        window.expire(now: start + .seconds(5), timeout: .seconds(1))
        window.acknowledge(tag: 4, multiple: false)
        window.failAll(AMQPError(.connectionLost, "gone"))
        #expect(results.summary == ["1:timed_out", "2:timed_out", "3:confirmed", "4:timed_out"])
        #expect(window.count == 0 && window.firstDeadline == nil)
    }
}

/// Collects completions in the order they ran.
final class ResultsBox: Sendable {
    private let entries = Mutex<[String]>([])

    var summary: [String] { entries.withLock { $0 } }

    func append(_ index: Int, _ result: Result<AMQPPublishOutcome, AMQPError>) {
        let entry: String
        switch result {
        case .success(.confirmed): entry = "\(index):confirmed"
        case .success(.returned(let code, _)): entry = "\(index):returned \(code)"
        case .success(.sent): entry = "\(index):sent"
        case .failure(let error): entry = "\(index):\(error.code)"
        }
        entries.withLock { $0.append(entry) }
    }
}
