import Foundation
import Testing
@testable import Simulator

@Suite("JSONText")
struct JSONTextTests {
    @Test(.timeLimit(.minutes(1)))
    func encodeKeepsNumbersAndBoolsApartAfterAParseRoundTrip() throws {
        let text = #"{"a":true,"b":1,"c":1.5,"d":0,"e":"x\"y\n","f":[null,false],"g":{"h":-7}}"#
        let parsed = try #require(JSONText.object(text))
        #expect(JSONText.encode(parsed) == #"{"a":true,"b":1,"c":1.5,"d":0,"e":"x\"y\n","f":[null,false],"g":{"h":-7}}"#)
        #expect(JSONText.encode(["n": Int64(1695283635765), "t": true, "s": "中文\u{1}"] as [String: Any]) == #"{"n":1695283635765,"s":"中文\u0001","t":true}"#)
    }
}
