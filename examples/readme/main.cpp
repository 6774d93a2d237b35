#include <iostream>
#include <keel/keel.hpp>
struct UserCreated { std::string id; };  NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(UserCreated, id)
struct UserRenamed { std::string name; };  NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(UserRenamed, name)
struct User {                             // a plain aggregate: state + one handler per event
    std::string id, name;
    void On(const UserCreated& e) { id = e.id; }
    void On(const UserRenamed& e) { name = e.name; }
};
int main() try {
    auto store = keel::OpenStore("sqlite://readme.db").value();
    keel::Repository<User, UserCreated, UserRenamed> users(*store);
    users.Append("User-123", keel::ExpectedVersion::NoStream(), UserCreated{"123"}, UserRenamed{"jun"}).value();
    std::cout << users.Load("User-123").value()->name << "\n";  // jun
} catch (const std::exception& e) { std::cerr << e.what() << "\n"; return 1; }  // 2nd run: the stream exists
