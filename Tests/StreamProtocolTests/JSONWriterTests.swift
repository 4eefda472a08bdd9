import Foundation
import Testing

@testable import StreamProtocol

@Suite("JSON writer")
struct JSONWriterTests {
    @Test(.timeLimit(.minutes(1))) func sortsMembersByTheirBytesNotByALocale() throws {
        // A locale's collation (case-insensitive, digits by value) would give a9, a10, b, B2, é, 中.
        let object: [String: Any] = ["b": 1, "B2": 2, "a10": 3, "a9": 4, "é": 5, "中": 6, "": 7]
        #expect(JSON.text(object) == #"{"":7,"B2":2,"a10":3,"a9":4,"b":1,"é":5,"中":6}"#)
    }

    @Test(.timeLimit(.minutes(1))) func escapesWhatJSONRequiresAndNothingElse() throws {
        let text = "quote \" backslash \\ newline \n return \r tab \t bell \u{7} escape \u{1B} slash / 中文 😀"
        let written = try #require(JSON.text([text]))
        #expect(written == #"["quote \" backslash \\ newline \n return \r tab \t bell \u0007 escape \u001b slash / 中文 😀"]"#)
        let parsed = try #require(try JSONSerialization.jsonObject(with: Data(written.utf8)) as? [String])
        #expect(parsed == [text])
        // Escapes at both ends and side by side, and nothing at all: the runs between them are copied whole.
        let edges = ["\"x\\", "\n\n", "", "\u{1}"]
        #expect(JSON.text(edges) == #"["\"x\\","\n\n","","\u0001"]"#)
        #expect(try JSONSerialization.jsonObject(with: Data(try #require(JSON.text(edges)).utf8)) as? [String] == edges)
    }

    @Test(.timeLimit(.minutes(1))) func writesNumbersAndBooleansAsTheirTypesSay() throws {
        let object: [String: Any] = [
            "int": -7, "int64": Int64(1_695_283_635_765), "uint8": UInt8(255), "half": 1.5, "whole": 12.0,
            "small": 0.1, "float": Float(2.5), "yes": true, "no": false, "none": NSNull(),
        ]
        #expect(
            JSON.text(object)
                == #"{"float":2.5,"half":1.5,"int":-7,"int64":1695283635765,"no":false,"none":null,"small":0.1,"uint8":255,"whole":12,"yes":true}"#
        )
        // Parsed numbers are NSNumbers, which also cast to Bool and Int on Linux: kept apart by type.
        let parsed = try #require(JSON.object(#"{"a":true,"b":1,"c":1.5,"d":0,"e":false}"#))
        #expect(JSON.text(parsed) == #"{"a":true,"b":1,"c":1.5,"d":0,"e":false}"#)
    }

    @Test(.timeLimit(.minutes(1))) func nestsObjectsArraysAndOptionals() throws {
        let missing: String? = nil
        let present: String? = "here"
        let object: [String: Any] = [
            "list": [1, "two", [3], ["four": 4] as [String: Any], [] as [Any], [:] as [String: Any]] as [Any],
            "strings": ["z": "last", "a": "first"], "missing": missing as Any, "present": present as Any,
        ]
        #expect(
            JSON.text(object)
                == #"{"list":[1,"two",[3],{"four":4},[],{}],"missing":null,"present":"here","strings":{"a":"first","z":"last"}}"#
        )
    }

    @Test(.timeLimit(.minutes(1))) func prettyIndentsAsJSONSerializationDoes() throws {
        let object: [String: Any] = ["b": [1, 2] as [Any], "a": ["c": "d"], "e": [] as [Any]]
        #expect(JSON.text(object, pretty: true) == "{\n  \"a\" : {\n    \"c\" : \"d\"\n  },\n  \"b\" : [\n    1,\n    2\n  ],\n  \"e\" : []\n}")
    }

    @Test(.timeLimit(.minutes(1))) func refusesWhatJSONCannotSay() throws {
        #expect(JSON.text(["x": Double.nan]) == nil)
        #expect(JSON.text(["x": Double.infinity]) == nil)
        #expect(JSON.text([1: "integer key"] as [Int: String]) == nil)
        #expect(JSON.text(["x": Date(timeIntervalSince1970: 0)]) == nil)
        #expect(JSON.encode(["x": Double.nan]) == "{}")
    }
}
