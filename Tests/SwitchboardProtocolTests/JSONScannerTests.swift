import SwitchboardProtocol
import Testing

@Suite("JSON scanner")
struct JSONScannerTests {
    private func members(_ text: String) throws(JSONScanError) -> [JSONMember] {
        try JSONScanner.topLevelMembers(of: Array(text.utf8))
    }

    @Test("valid objects give their members with exact value ranges")
    func validObjects() throws {
        let text = #" { "type" : "direct", "n": -1.5e+3, "data": {"a":[1,true,null,"x"]}, "e": "\u00e9\ud83d\ude00" } "#
        let found = try members(text)
        #expect(found.map(\.key) == ["type", "n", "data", "e"])
        #expect(found[0].stringValue == "direct")
        #expect(found[1].kind == .number)
        #expect(found[2].kind == .object)
        let bytes = Array(text.utf8)
        #expect(String(decoding: bytes[found[2].range], as: UTF8.self) == #"{"a":[1,true,null,"x"]}"#)
        #expect(found[3].stringValue == "é😀")
    }

    @Test(
        "malformed JSON is refused",
        arguments: [
            "", "{", "}", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{a:1}", "{\"a\":01}", "{\"a\":1.}", "{\"a\":-}",
            "{\"a\":tru}", "{\"a\":\"\\x\"}", "{\"a\":\"\\ud800\"}", "{\"a\":\"\\udc00\"}", "{\"a\":\"\u{1}\"}",
            "{\"a\":1} x", "{\"a\":[1,]}", "{\"a\":\"unterminated}", "{\"a\":1}{", "{\"a\":NaN}",
        ]
    )
    func malformed(text: String) {
        #expect(throws: JSONScanError.self) { try members(text) }
    }

    @Test("an array gives each element's exact text; anything but one array is refused")
    func arrayElements() throws {
        let text = #" [ {"user":"a]\"}","connections":2} , [1,{}], "x,y" ,null ] "#
        let bytes = Array(text.utf8)
        let elements = try JSONScanner.arrayElements(of: bytes)
        #expect(elements.map { String(decoding: bytes[$0], as: UTF8.self) } == [#"{"user":"a]\"}","connections":2}"#, "[1,{}]", #""x,y""#, "null"])
        #expect(try JSONScanner.arrayElements(of: Array("[]".utf8)).isEmpty)
        for bad in ["", "{}", "[1,]", "[1] x", "[1", "[01]"] {
            #expect(throws: JSONScanError.self, "\(bad)") { try JSONScanner.arrayElements(of: Array(bad.utf8)) }
        }
    }

    @Test("invalid UTF-8 inside a string is refused")
    func invalidUTF8() {
        let bytes: [UInt8] = Array(#"{"a":""#.utf8) + [0xC3, 0x28] + Array(#""}"#.utf8)
        #expect(throws: JSONScanError.self) { try JSONScanner.topLevelMembers(of: bytes) }
    }

    @Test("values that are not objects are told apart from garbage")
    func notObjects() {
        for text in ["[]", "\"s\"", "1", "null", " true "] {
            #expect(throws: JSONScanError.notAnObject) { try members(text) }
        }
    }

    @Test("duplicate keys and deep nesting are refused")
    func limits() {
        #expect(throws: JSONScanError.duplicateKey("a")) { try members(#"{"a":1,"a":2}"#) }
        let deep = "{\"a\":" + String(repeating: "[", count: 100) + String(repeating: "]", count: 100) + "}"
        #expect(throws: JSONScanError.tooDeep) { try members(deep) }
        let fine = "{\"a\":" + String(repeating: "[", count: 60) + String(repeating: "]", count: 60) + "}"
        #expect(throws: Never.self) { try members(fine) }
    }
}
