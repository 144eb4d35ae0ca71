import SwitchboardServer
import Testing

/// The gateway id names a RabbitMQ queue and appears in `welcome`: 1…64 of `[A-Za-z0-9._-]`.
@Suite("GatewayConfiguration.validateGatewayID")
struct GatewayIDTests {
    @Test("ids of letters, digits, '.', '_' and '-' up to 64 bytes are accepted")
    func accepted() throws {
        for id in ["gw-1", "a", "gateway_2.eu-west", "ABCxyz019", String(repeating: "x", count: 64)] {
            try GatewayConfiguration.validateGatewayID(id)
        }
    }

    @Test("empty, too long, or any other character is refused, with the rule in the error")
    func refused() {
        for id in ["", String(repeating: "x", count: 65), "gw 1", "gw/1", "gw#1", "gw*", "gw\n1", "gé", "user.~"] {
            #expect(throws: InvalidGatewayID(id: id), "\(id.debugDescription)") { try GatewayConfiguration.validateGatewayID(id) }
        }
        #expect(InvalidGatewayID(id: "gw 1").description == #"gateway id "gw 1" must be 1…64 characters of [A-Za-z0-9._-]"#)
    }
}
