// The source document's client flows, as a new user would run them under Node 20's fetch:
// create a conversation with an initial message, send a follow-up, chatWithGPT.
// Usage: node chatbeto_flows.mjs BASE_URL API_KEY PROJECT_ID
const [API_BASE, API_KEY, PROJECT_ID] = process.argv.slice(2);

async function createConversation(projectId, title, initialMessage) {
  const response = await fetch(`${API_BASE}/api/v1/openai/conversations`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY },
    body: JSON.stringify({ projectId, title, initialMessage }),
  });
  const data = await response.json();
  if (data.status !== 'success') throw new Error(JSON.stringify(data));
  return data.data;
}

async function sendMessage(conversationId, message) {
  const response = await fetch(`${API_BASE}/api/v1/openai/conversations/${conversationId}/messages`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY },
    body: JSON.stringify({ message }),
  });
  const data = await response.json();
  if (data.status !== 'success') throw new Error(JSON.stringify(data));
  return data.data;
}

async function chatWithGPT(messages, projectId = null) {
  const response = await fetch(`${API_BASE}/api/v1/openai/chat/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'Authorization': `Bearer ${API_KEY}` },
    body: JSON.stringify({ messages, projectId }),
  });
  const data = await response.json();
  if (data.status !== 'success') throw new Error(JSON.stringify(data));
  return data.data.response.content;
}

const created = await createConversation(Number(PROJECT_ID), 'Soporte', '¿Cómo despliego?');
const followUp = await sendMessage(created.conversation.id, '¿Y en producción?');
const answer = await chatWithGPT([
  { role: 'system', content: 'Eres un asistente.' },
  { role: 'user', content: 'Hola' },
]);
console.log(JSON.stringify({
  conversationId: created.conversation.id,
  first: created.response.content,
  followUp: followUp.response.content,
  chat: answer,
}));
