// Uses the installed headers and library: appends to a memory store and reads the event back.
#include <keel/event_store.hpp>

#include <iostream>

int main() {
    auto store = keel::OpenStore("memory:").value();
    store->Append("Greeting-1", keel::ExpectedVersion::NoStream(), {keel::EventData{{}, "Said", R"({"text":"hello"})", ""}})
        .value();
    auto events = store->ReadStream("Greeting-1").value();
    if (events.size() != 1 || events[0].type != "Said") return 1;
    std::cout << "consumer read " << events[0].type << " " << events[0].data << "\n";
    return 0;
}
