#include "core/entity_json.h"

#include "core/entity.h"
#include "rapidjson/stringbuffer.h"
#include "rapidjson/writer.h"

namespace quell::core {

void NormalizeEntityMembers(rapidjson::Value& object,
                            rapidjson::Document::AllocatorType& allocator) {
  for (auto m = object.MemberBegin(); m != object.MemberEnd(); ++m) {
    if (!m->value.IsString()) continue;
    const std::string_view text(m->value.GetString(), m->value.GetStringLength());
    auto as_entity = Entity::Parse(text);
    if (as_entity.ok() && as_entity->str() != text) {
      m->value.SetString(as_entity->str().data(),
                         static_cast<rapidjson::SizeType>(as_entity->str().size()), allocator);
    }
  }
}

std::string NormalizeEntityMembers(std::string_view object_json) {
  rapidjson::Document doc;
  doc.Parse(object_json.data(), object_json.size());
  if (doc.HasParseError() || !doc.IsObject()) return std::string(object_json);
  NormalizeEntityMembers(doc, doc.GetAllocator());
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  doc.Accept(w);
  return std::string(buf.GetString(), buf.GetSize());
}

}  // namespace quell::core
